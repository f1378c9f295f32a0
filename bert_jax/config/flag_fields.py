"""Command-line flags that are short names for config fields: `bert-jax finetune --epochs 5` sets
`config.train.epochs` as `--config.train.epochs=5` would. The config field holds the one default
(`bert_jax.config.defaults`); the flags default to "not given" and `--help` shows the field's.

Imports nothing, so that the command line builds its parser without loading ml_collections.
"""

# flag -> (config field, argparse type, help). A bool flag is a switch that sets the field to true.
FINETUNE = {
    "--max-length": ("train.max_length", int, "tokens per example; longer texts are truncated and counted"),
    "--batch-size": ("train.global_batch_size", int, "examples per step over all devices and hosts"),
    "--epochs": ("train.epochs", int, "passes over the training file"),
    "--learning-rate": ("train.learning_rate", float, "peak learning rate, after warmup"),
    "--patience": ("train.patience", int, "epochs without eval improvement before stopping"),
    "--seed": ("train.seed", int, "head initialisation, dropout and example order"),
    "--from-scratch": ("train.from_scratch", bool, "random weights, same architecture (baseline)"),
}

# `bert-jax demo --steps N` also shortens the warmup to at most N / 10 steps (bert_jax.demo).
DEMO = {"--steps": ("train.num_steps", int, "pretraining steps")}


def flag_names(table: dict[str, tuple]) -> dict[str, str]:
    """{'train.epochs': '--epochs', ...}: the flag that sets each field, to name it in errors."""
    return {field: flag for flag, (field, _, _) in table.items()}


def given(args, table: dict[str, tuple]) -> dict[str, object]:
    """{'train.epochs': 5, ...} for the flags of `table` given on the command line (argparse
    namespace `args`), for `ConfigDict.update_from_flattened_dict`."""
    values = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in table.items()}
    return {field: value for field, value in values.items() if value is not None}
