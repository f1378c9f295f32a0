"""Ranges of every numeric config field, checked before a command does any work.

ml_collections checks types on assignment but not values, and a zero or negative step count,
batch or rate only fails later (a ZeroDivisionError after compiling, a TensorFlow traceback,
NaN at step 1). `validate` names the first bad field as `config.section.field`.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from bert_jax.config import flag_fields


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values: [low, high] with open ends where `low_open` / `high_open`; `also` lists
    extra allowed values outside the range (e.g. -1 = "all remaining devices")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()
    integer: bool = True
    why: str = ""  # said after the range in the error

    def contains(self, value) -> bool:
        if value in self.also:
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high}")
        text = " and ".join(parts) + "".join(f" (or {v})" for v in self.also)
        return f"{text} ({self.why})" if self.why else text


COUNT = Range(1)  # steps, sizes, batches: a positive integer
COUNT_OR_ZERO = Range(0)  # 0 has a documented meaning (take from the data, only at the end, ...)
PROBABILITY = Range(0.0, 1.0, high_open=True, integer=False)  # dropout: [0, 1)
POSITIVE = Range(0.0, low_open=True, integer=False)
NON_NEGATIVE = Range(0.0, integer=False)
MESH_AXIS = Range(1, also=(-1,))  # -1 = all remaining devices
SEED = Range(0, 2**32 - 1)  # numpy's SeedSequence and the data order need non-negative seeds

MESH = {"mesh.data": MESH_AXIS, "mesh.fsdp": MESH_AXIS, "mesh.tensor": MESH_AXIS}

PRETRAINING = {
    "model.vocab_size": COUNT_OR_ZERO, "model.hidden_size": COUNT, "model.num_layers": COUNT,
    "model.num_heads": COUNT, "model.intermediate_size": COUNT, "model.max_position_embeddings": COUNT,
    "model.type_vocab_size": COUNT, "model.hidden_dropout": PROBABILITY, "model.attention_dropout": PROBABILITY,
    "model.layer_norm_eps": POSITIVE, "model.initializer_range": POSITIVE,
    "data.max_seq_length": Range(3, also=(0,)), "data.max_predictions_per_seq": COUNT_OR_ZERO,
    "data.mask_prob": Range(0.0, 1.0, low_open=True, high_open=True, integer=False),
    "data.shuffle_buffer": COUNT_OR_ZERO,
    "data.eval_batch_size": COUNT_OR_ZERO,
    "train.global_batch_size": COUNT, "train.num_steps": COUNT, "train.grad_accum_steps": COUNT,
    "train.seed": SEED, "train.log_every": COUNT, "train.eval_every": COUNT_OR_ZERO,
    "train.eval_steps": COUNT_OR_ZERO, "train.checkpoint_every": COUNT, "train.max_to_keep": COUNT,
    "train.peak_tflops_per_device": NON_NEGATIVE,
    "optim.learning_rate": POSITIVE, "optim.warmup_steps": COUNT_OR_ZERO,
    "optim.end_lr_factor": Range(0.0, 1.0, integer=False), "optim.weight_decay": NON_NEGATIVE,
    "optim.b1": Range(0.0, 1.0, high_open=True, integer=False),
    "optim.b2": Range(0.0, 1.0, high_open=True, integer=False),
    "optim.eps": POSITIVE, "optim.grad_clip_norm": NON_NEGATIVE,
} | MESH

FINETUNING = {
    "model.hidden_dropout": PROBABILITY, "model.attention_dropout": PROBABILITY,
    "train.max_length": Range(3, why="the [CLS] and [SEP] tokens and one more"), "train.global_batch_size": COUNT, "train.epochs": COUNT,
    "train.learning_rate": POSITIVE, "train.warmup_fraction": PROBABILITY, "train.weight_decay": NON_NEGATIVE,
    "train.grad_clip_norm": NON_NEGATIVE, "train.patience": COUNT, "train.seed": SEED,
    "train.log_every": COUNT, "train.checkpoint_every": COUNT, "train.max_to_keep": COUNT,
} | MESH


def numeric_fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
    """{'section.field': value} of every int / float leaf (bools excluded)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out |= numeric_fields(value, name + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def validate(config: ml_collections.ConfigDict, ranges: dict[str, Range], flags: dict[str, str] | None = None
             ) -> None:
    """Raises ValueError naming `config.x.y` for the first value outside its range, of the wrong
    type (a float where an integer is meant, a bool, a string), or NaN. Fields of `config` that
    are numeric but have no range are an error too, so that a new field cannot skip the check.
    `flags` names the command-line flag that sets a field, added to its error."""
    flags = flags or {}
    fields = numeric_fields(config)
    unranged = sorted(set(fields) - set(ranges))
    if unranged:
        raise ValueError(f"config.{unranged[0]}: no range is defined for this field (bert_jax/config/validation.py)")
    for name, allowed in ranges.items():
        section, field = name.split(".")
        value = config[section][field] if section in config and field in config[section] else None
        if value is None:
            raise ValueError(f"config.{name} is missing")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                allowed.integer and not isinstance(value, int)):
            kind = "an integer" if allowed.integer else "a number"
            raise ValueError(f"{_named(name, value, flags)}: must be {kind}")
        if isinstance(value, float) and math.isnan(value) or not allowed.contains(value):
            raise ValueError(f"{_named(name, value, flags)}: must be {allowed.describe()}")


def _named(name: str, value, flags: dict[str, str]) -> str:
    return f"config.{name}={value!r}" + (f" ({flags[name]})" if name in flags else "")


def validate_axis_rules(mesh: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming `config.mesh.logical_axis_rules` when a rule is not a pair (logical
    axis, mesh axis | tuple of mesh axes | None), names a logical axis the model does not use (those
    of the default rules) or a mesh axis that is not a size field of `mesh` (data, fsdp, tensor).
    Flax would silently ignore the first and fail on the second only when the step is traced."""
    from bert_jax.config.defaults import mesh_config

    if "logical_axis_rules" not in mesh:
        raise ValueError("config.mesh.logical_axis_rules is missing (the defaults: bert_jax.config.defaults.mesh_config)")
    logical = [name for name, _ in mesh_config().logical_axis_rules]
    mesh_axes = [name for name, value in mesh.items() if isinstance(value, int)]
    for rule in mesh.logical_axis_rules:
        where = f"config.mesh.logical_axis_rules: rule {rule!r}"
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise ValueError(f"{where} is not a pair (logical axis, mesh axis | tuple of mesh axes | None)")
        name, axes = rule
        if name not in logical:
            raise ValueError(f"{where}: the model has no logical axis {name!r} ({', '.join(logical)})")
        for axis in ([] if axes is None else [axes] if isinstance(axes, str) else axes):
            if axis not in mesh_axes:
                raise ValueError(f"{where}: no mesh axis {axis!r} ({', '.join(mesh_axes)})")


def validate_pretraining(config: ml_collections.ConfigDict) -> None:
    """`validate` with the pretraining ranges (bert_jax.config.defaults.bert_config), then
    `validate_axis_rules`."""
    validate(config, PRETRAINING)
    validate_axis_rules(config.mesh)


def validate_finetuning(config: ml_collections.ConfigDict) -> None:
    """`validate` with the fine-tuning ranges (bert_jax.config.defaults.finetune_config), naming the
    `bert-jax finetune` flag of a field where it has one, then `validate_axis_rules`."""
    validate(config, FINETUNING, flag_fields.flag_names(flag_fields.FINETUNE))
    validate_axis_rules(config.mesh)
