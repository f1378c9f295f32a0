"""tf.data over the prepare-data shards -> per-host numpy batches, deterministic and resumable.

Each host reads its own shard files (`files[process_index::process_count]`). Epoch e visits
them in a seeded random order, sequentially; the resulting stream is shuffled in fixed blocks
of `shuffle_buffer` records with a stateless seed per block, then batched, parsed and (dynamic
masking) masked with a seed per batch index. Every batch is therefore a pure function of
(seed, host, batch index), so a restart at step s starts the stream at batch s exactly:
no iterator state needs saving, and the skip costs at most one file and one block.
Masking runs on the host (numpy, `bert_jax.data.masking`) inside tf.data's parallel map.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np
import tensorflow as tf

from bert_jax.data import masking

tf.config.set_visible_devices([], "GPU")  # TensorFlow must never take accelerator memory

BATCH_KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
              "masked_lm_weights", "next_sentence_labels", "example_weights")


def shard_files(data_dir: str, metadata: dict, split: str) -> list[tuple[str, int]]:
    """(path, examples) of every shard of `split`; missing or empty files are a clear error."""
    entries = metadata["splits"][split]["files"]
    files = []
    for entry in entries:
        path = os.path.join(data_dir, entry["name"])
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"shard {path} listed in metadata.json is missing")
        if entry["examples"] > 0 and tf.io.gfile.stat(path).length == 0:
            raise ValueError(f"shard {path} is empty, metadata.json says it holds {entry['examples']} examples")
        files.append((path, entry["examples"]))
    return files


def _masking_config(metadata: dict, mask_prob: float) -> masking.MaskingConfig:
    special = metadata["special_ids"]
    return masking.MaskingConfig(mask_prob, metadata["max_predictions_per_seq"], metadata["vocab_size"],
                                 special["[MASK]"], tuple(sorted(special.values())))


def _parse_batch(records, metadata: dict):
    """Serialized examples [B] -> dense, padded int32 / float32 tensors."""
    seq, slots = metadata["max_seq_length"], metadata["max_predictions_per_seq"]
    static = metadata["masking"] == "static"
    spec = {"input_ids": tf.io.VarLenFeature(tf.int64), "segment_ids": tf.io.VarLenFeature(tf.int64),
            "next_sentence_label": tf.io.FixedLenFeature([1], tf.int64)}
    if static:
        spec |= {"masked_lm_positions": tf.io.FixedLenFeature([slots], tf.int64),
                 "masked_lm_ids": tf.io.FixedLenFeature([slots], tf.int64),
                 "masked_lm_weights": tf.io.FixedLenFeature([slots], tf.float32)}
    else:
        spec["word_starts"] = tf.io.VarLenFeature(tf.int64)
    parsed = tf.io.parse_example(records, spec)
    batch = tf.shape(records)[0]

    def dense(sparse, padding=0):
        sparse = tf.sparse.reset_shape(sparse, tf.stack([tf.cast(batch, tf.int64), seq]))
        return tf.cast(tf.sparse.to_dense(sparse, default_value=padding), tf.int32)

    out = {"input_ids": dense(parsed["input_ids"], metadata["special_ids"]["[PAD]"]),
           "segment_ids": dense(parsed["segment_ids"]),
           "next_sentence_labels": tf.cast(parsed["next_sentence_label"][:, 0], tf.int32)}
    lengths = tf.cast(parsed["input_ids"].indices[:, 0], tf.int32)
    out["input_mask"] = tf.cast(tf.range(seq)[None, :] < tf.math.bincount(
        lengths, minlength=batch, maxlength=batch)[:, None], tf.int32)
    out["example_weights"] = tf.ones([batch], tf.float32)
    if static:
        out |= {"masked_lm_positions": tf.cast(parsed["masked_lm_positions"], tf.int32),
                "masked_lm_ids": tf.cast(parsed["masked_lm_ids"], tf.int32),
                "masked_lm_weights": parsed["masked_lm_weights"]}
    else:
        out["word_starts"] = dense(parsed["word_starts"])
    return out


def _mask_fn(metadata: dict, mask_prob: float, seed: int, stream_id: int):
    """A tf.data map that masks a parsed batch with a seed of (seed, stream, batch index)."""
    config = _masking_config(metadata, mask_prob)
    slots = metadata["max_predictions_per_seq"]

    def mask_numpy(batch_index, input_ids, input_mask, word_starts):
        rng = np.random.default_rng([seed, stream_id, int(batch_index)])
        out = masking.mask_batch(input_ids, input_mask, word_starts.astype(bool), rng, config)
        return (out["input_ids"], out["masked_lm_positions"], out["masked_lm_ids"], out["masked_lm_weights"])

    def apply(batch_index, batch):
        ids, positions, labels, weights = tf.numpy_function(
            mask_numpy, [batch_index, batch["input_ids"], batch["input_mask"], batch.pop("word_starts")],
            [tf.int32, tf.int32, tf.int32, tf.float32], stateful=False)
        rows = tf.shape(batch["input_ids"])[0]
        batch["input_ids"] = tf.ensure_shape(ids, batch["input_ids"].shape)
        batch["masked_lm_positions"] = tf.reshape(positions, [rows, slots])
        batch["masked_lm_ids"] = tf.reshape(labels, [rows, slots])
        batch["masked_lm_weights"] = tf.reshape(weights, [rows, slots])
        return batch

    return apply


def _epoch_plan(files: list[tuple[str, int]], seed: int, host: int, epoch: int) -> list[tuple[str, int]]:
    order = np.random.default_rng([seed, host, epoch]).permutation(len(files))
    return [files[i] for i in order]


def train_batches(data_dir: str, metadata: dict, batch_size: int, num_batches: int, *, seed: int,
                  mask_prob: float, shuffle_buffer: int, start_batch: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Per-host training batches `start_batch`, `start_batch + 1`, ... (`num_batches` of them)."""
    all_files = shard_files(data_dir, metadata, "train")
    if len(all_files) < process_count:
        raise ValueError(f"{data_dir} has {len(all_files)} train shards for {process_count} hosts; "
                         f"prepare the data with --num-shards >= {process_count}")
    files = all_files[process_index::process_count]
    per_epoch = sum(n for _, n in files)
    block = max(1, shuffle_buffer)
    start = start_batch * batch_size
    first_block = start // block
    epoch, offset = divmod(first_block * block, per_epoch)
    plan = []
    for path, count in _epoch_plan(files, seed, process_index, epoch):
        if offset >= count:
            offset -= count
            continue
        plan.append((path, offset))
        offset = 0
    needed = (start - first_block * block) + num_batches * batch_size + block
    for extra in range(1, math.ceil(needed / per_epoch) + 2):
        plan += [(path, 0) for path, _ in _epoch_plan(files, seed, process_index, epoch + extra)]
    paths, skips = zip(*plan)
    ds = tf.data.Dataset.from_tensor_slices((list(paths), list(skips)))
    ds = ds.flat_map(lambda path, skip: tf.data.TFRecordDataset(path, buffer_size=1 << 20).skip(
        tf.cast(skip, tf.int64)))
    ds = ds.batch(block).enumerate(start=first_block).map(
        lambda i, records: tf.random.experimental.stateless_shuffle(
            records, seed=tf.stack([tf.constant(seed, tf.int64) * 1_000_003 + process_index, i])))
    ds = ds.unbatch().skip(start - first_block * block).batch(batch_size, drop_remainder=True)
    ds = ds.take(num_batches).map(lambda r: _parse_batch(r, metadata), num_parallel_calls=tf.data.AUTOTUNE)
    if metadata["masking"] == "dynamic":
        ds = ds.enumerate(start=start_batch).map(_mask_fn(metadata, mask_prob, seed, process_index),
                                                 num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return _numpy_batches(ds, [p for p, _ in files], data_dir)


def eval_batch_count(metadata: dict, batch_size: int, process_count: int, eval_steps: int) -> int:
    """Eval batches per host: the same on every host (hosts with fewer examples pad)."""
    total = metadata["splits"]["eval"]["examples"]
    batches = math.ceil(math.ceil(total / process_count) / batch_size)
    return min(batches, eval_steps) if eval_steps > 0 else batches


def eval_batches(data_dir: str, metadata: dict, batch_size: int, num_batches: int, *, seed: int,
                 mask_prob: float, process_index: int = 0, process_count: int = 1
                 ) -> Iterator[dict[str, np.ndarray]]:
    """`num_batches` per-host eval batches with fixed masks; padding rows have weight 0."""
    files = [p for p, _ in shard_files(data_dir, metadata, "eval")]
    ds = tf.data.TFRecordDataset(files).shard(process_count, process_index).batch(batch_size)
    ds = ds.map(lambda r: _parse_batch(r, metadata))
    if metadata["masking"] == "dynamic":
        ds = ds.enumerate().map(_mask_fn(metadata, mask_prob, seed, 1_000_000 + process_index))
    produced = 0
    for batch in _numpy_batches(ds.take(num_batches), files, data_dir):
        produced += 1
        missing = batch_size - len(batch["input_ids"])
        if missing:
            padding = _padding_rows(metadata, missing)
            batch = {k: np.concatenate([v, padding[k]]) for k, v in batch.items()}
        yield batch
    template = None
    while produced < num_batches:
        template = template or _padding_rows(metadata, batch_size)
        produced += 1
        yield template


def _padding_rows(metadata: dict, rows: int) -> dict[str, np.ndarray]:
    """`rows` rows of weight 0 that fill a host's last eval batches: [PAD] ids, zero masks."""
    seq, slots = metadata["max_seq_length"], metadata["max_predictions_per_seq"]
    shapes = {"input_ids": (rows, seq), "input_mask": (rows, seq), "segment_ids": (rows, seq),
              "masked_lm_positions": (rows, slots), "masked_lm_ids": (rows, slots),
              "masked_lm_weights": (rows, slots), "next_sentence_labels": (rows,), "example_weights": (rows,)}
    batch = {k: np.zeros(s, np.float32 if k.endswith("weights") else np.int32) for k, s in shapes.items()}
    batch["input_ids"][:] = metadata["special_ids"]["[PAD]"]
    return batch


def _numpy_batches(ds: tf.data.Dataset, files: list[str], data_dir: str) -> Iterator[dict]:
    """Iterates `ds` as numpy; a corrupt record becomes an error naming the shard."""
    iterator = iter(ds.as_numpy_iterator())
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
            raise ValueError(f"corrupt shard {_find_corrupt(files) or data_dir}: "
                             f"{error.message.splitlines()[0]}") from None
        yield {k: batch[k] for k in BATCH_KEYS}


def _find_corrupt(files: list[str]) -> str | None:
    for path in files:
        try:
            for record in tf.data.TFRecordDataset(path):
                tf.io.parse_single_example(record, {"input_ids": tf.io.VarLenFeature(tf.int64)})
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
            return path
    return None
