"""Checks made when a run starts, before anything is written into its workdir.

- `check_prepared_data`: a data directory agrees with itself (metadata.json, its tokenizer/,
  the first record of every shard), so that an edited or mixed-up directory is named as such
  instead of surfacing as NaN at step 1 or a "corrupt shard".
- `check_tokenizer_matches`: a workdir's tokenizer is the one its model was trained with and the
  one the data was made with (`bert_jax.inference.pretrained.check_workdir_tokenizer` checks it
  when a workdir is loaded).
- `compare_with_saved`: a resumed run's config against the config.json of the run it continues:
  other architectures, data positions or schedules are refused in one line; harmless changes
  are allowed and listed.
"""

from __future__ import annotations

import json
import os

from flax import traverse_util

from bert_jax import fs
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.data.spec import DataSpec

# Fields whose change makes the checkpoint unloadable (parameter or optimizer-state layout).
LAYOUT = ("model.vocab_size", "model.hidden_size", "model.num_layers", "model.num_heads",
          "model.intermediate_size", "model.max_position_embeddings", "model.type_vocab_size",
          "model.scan_layers", "model.param_dtype", "optim.name")
# Fields that decide which examples come next or how they are masked: a resumed run with other
# values would skip, repeat or mask differently. Never changed on resume.
DATA_POSITION = ("train.global_batch_size", "train.seed", "data.shuffle_buffer", "data.mask_prob",
                 "data.max_seq_length", "data.max_predictions_per_seq")
# Fields that define the optimizer's schedule: changed on resume only when named in `allow`.
SCHEDULE = ("train.num_steps", "optim.learning_rate", "optim.warmup_steps", "optim.schedule",
            "optim.end_lr_factor", "optim.weight_decay", "optim.b1", "optim.b2", "optim.eps",
            "optim.grad_clip_norm")


def _first_record(path: str):
    """The first tf.train.Example of a TFRecord file, or None when it is empty."""
    import tensorflow as tf

    try:
        for record in tf.data.TFRecordDataset(path).take(1):
            return tf.train.Example.FromString(record.numpy())
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        raise ValueError(f"corrupt shard {path}: {error.message.splitlines()[0]}") from None
    return None


def _check_record(path: str, example, spec: DataSpec) -> None:
    features = example.features.feature
    ids = list(features["input_ids"].int64_list.value)
    seq, vocab = spec.max_seq_length, spec.vocab_size
    if len(ids) > seq:
        raise ValueError(f"shard {path} holds examples of {len(ids)} tokens but metadata.json says "
                         f"max_seq_length={seq}: the metadata does not belong to these shards")
    if ids and max(ids) >= vocab:
        raise ValueError(f"shard {path} holds token id {max(ids)} but metadata.json says vocab_size={vocab}: "
                         f"the shards were made with a larger vocabulary")
    if spec.masking == "static":
        slots = len(features["masked_lm_positions"].int64_list.value)
        if slots != spec.max_predictions_per_seq:
            raise ValueError(f"shard {path} holds {slots} masked positions per example but metadata.json "
                             f"says max_predictions_per_seq={spec.max_predictions_per_seq}")


def check_prepared_data(data_dir: str, spec: DataSpec) -> None:
    """Raises ValueError naming the file when `data_dir`'s parts disagree: metadata.json's own
    sizes against its recorded arguments, its tokenizer/ (fingerprint, vocabulary size, special
    ids) against metadata.json, and the first record of every shard (length, largest id, masked
    slots) against metadata.json. Reads one record per shard."""
    meta_path = os.path.join(data_dir, "metadata.json")
    for key in ("max_seq_length", "max_predictions_per_seq", "masking", "pair_task"):
        if key in spec.arguments and spec.arguments[key] != getattr(spec, key):
            raise ValueError(f"{meta_path}: {key}={getattr(spec, key)!r} but the data was prepared with "
                             f"{key}={spec.arguments[key]!r} (its 'arguments'); the file was edited")
    tok_dir = os.path.join(data_dir, spec.tokenizer_directory)
    tok = tokenizer_lib.load(tok_dir)
    if tok.vocab_size != spec.vocab_size:
        raise ValueError(f"{meta_path} says vocab_size={spec.vocab_size} but {tok_dir} has "
                         f"{tok.vocab_size} tokens; the two do not belong together")
    if tok.fingerprint != spec.tokenizer_fingerprint:
        raise ValueError(f"{tok_dir} (fingerprint {tok.fingerprint}) is not the tokenizer the shards were made "
                         f"with (fingerprint {spec.tokenizer_fingerprint} in {meta_path}); restore "
                         f"it or prepare the data again")
    if tok.special_ids_by_name != spec.special_ids:
        raise ValueError(f"{meta_path} says special ids {spec.special_ids} but {tok_dir} has "
                         f"{tok.special_ids_by_name}")
    for split in ("train", "eval"):
        for name, examples in spec.splits[split].files:
            path = os.path.join(data_dir, name)
            example = _first_record(path) if examples and fs.exists(path) else None
            if example is not None:
                _check_record(path, example, spec)


def check_tokenizer_matches(workdir: str, data_dir: str, spec: DataSpec) -> None:
    """A workdir that has a tokenizer (a resumed, finished or imported model) meets data made with
    the same tokenizer: raises ValueError naming both otherwise."""
    if not fs.exists(os.path.join(workdir, "tokenizer", "tokenizer.json")):
        return
    fingerprint = tokenizer_lib.load(os.path.join(workdir, "tokenizer")).fingerprint
    if fingerprint != spec.tokenizer_fingerprint:
        raise ValueError(f"--data {data_dir} was prepared with a different tokenizer (fingerprint "
                         f"{spec.tokenizer_fingerprint}) than {workdir}/tokenizer ({fingerprint}); "
                         f"prepare it with --tokenizer {workdir}/tokenizer")


def architecture(model: dict) -> str:
    """'L2/H128/A2/FF512/V100' of a model config dict."""
    return (f"L{model['num_layers']}/H{model['hidden_size']}/A{model['num_heads']}/"
            f"FF{model['intermediate_size']}/V{model['vocab_size']}")


def read_saved_config(workdir: str) -> dict | None:
    """The resolved config.json a pretraining run wrote into `workdir`, or None."""
    path = os.path.join(workdir, "config.json")
    if not fs.exists(path):
        return None
    with fs.open_text(path) as f:
        return json.load(f)


def compare_with_saved(saved: dict, resolved: dict, step: int, allow: tuple[str, ...] = ()) -> list[str]:
    """Compares the resolved config of a run resuming at checkpoint `step` with the `saved` one.

    Returns 'field old -> new' for every allowed change (logging cadence, eval, mesh, dtype, ...).
    Raises ValueError (one line, naming the fields) when the model or optimizer layout differs
    ("the checkpoint is L2/H128/..., the config asks for L4/H256/..."), when a field of the data
    position differs, or a schedule field differs and is not in `allow` (e.g. 'train.num_steps'),
    or when the checkpoint is already past train.num_steps."""
    resolved = json.loads(json.dumps(resolved))  # as config.json holds it: tuples become lists
    old, new = (traverse_util.flatten_dict(values, sep=".") for values in (saved, resolved))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    layout = [k for k in changed if k in LAYOUT]
    if layout:
        raise ValueError(f"the checkpoint is {architecture(saved['model'])} ({_pairs(layout, old)}), the config "
                         f"asks for {architecture(resolved['model'])} ({_pairs(layout, new)}); use the saved "
                         f"config or a new --workdir")
    position = [k for k in changed if k in DATA_POSITION]
    if position:
        raise ValueError(f"resuming at step {step} with changed {_changes(position, old, new)} would change the "
                         f"data stream (skipped, repeated or differently masked examples); keep the saved values or "
                         f"use a new --workdir")
    schedule = [k for k in changed if k in SCHEDULE and k not in allow]
    if schedule:
        flags = " ".join(f"--allow-change {k}" for k in schedule)
        raise ValueError(f"resuming at step {step} with changed {_changes(schedule, old, new)} rebuilds the "
                         f"learning-rate schedule; pass {flags} to do so deliberately")
    if new["train.num_steps"] < step:
        raise ValueError(f"config.train.num_steps={new['train.num_steps']} but the checkpoint is already at "
                         f"step {step}")
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed]


def allowed_changes(fields) -> tuple[str, ...]:
    """Normalises --allow-change values ('config.train.num_steps' or 'train.num_steps'); raises
    ValueError for a field that is not a schedule field (others can never change on resume)."""
    out = tuple(f.removeprefix("config.") for f in fields)
    for field in out:
        if field not in SCHEDULE:
            raise ValueError(f"--allow-change {field}: only schedule fields may change on resume: "
                             f"{', '.join(SCHEDULE)}")
    return out


def _pairs(fields: list[str], values: dict) -> str:
    return ", ".join(f"{k}={values.get(k)!r}" for k in fields)


def _changes(fields: list[str], old: dict, new: dict) -> str:
    return ", ".join(f"config.{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in fields)
