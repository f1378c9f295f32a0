"""Labelled text for fine-tuning: reading TSV/CSV/JSON lines, encoding to padded id arrays,
the example order of each epoch, and accuracy / macro-F1 from a confusion matrix."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np

from bert_jax import tokenizer as tokenizer_lib


@dataclasses.dataclass
class Examples:
    """Encoded examples: ids, mask and segments [N, S], label ids [N], and truncation count."""

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    labels: np.ndarray
    truncated: int


def read_table(path: str, columns: list[str]) -> list[dict]:
    """Rows of a .tsv, .csv or .jsonl file; every name in `columns` must exist."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8", newline="\n") as f:  # a bare \r inside a text is not a line end
        if path.endswith((".jsonl", ".json")):
            rows = [json.loads(line) for line in f if line.strip()]
        elif path.endswith(".tsv"):  # TSV has no quoting: '"' and '\r' in a review are just characters
            lines = [line.rstrip("\n").removesuffix("\r").split("\t") for line in f if line.strip()]
            rows = [dict(zip(lines[0], fields)) for fields in lines[1:]] if lines else []
        else:
            rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: unknown column(s) {missing}; the file has {sorted(rows[0])}")
    for number, row in enumerate(rows, 2):
        if any(row.get(c) is None for c in columns):
            raise ValueError(f"{path}: line {number} lacks column(s) {[c for c in columns if row.get(c) is None]}")
    return rows


def encode(rows, tok: tokenizer_lib.Tokenizer, text_column: str, pair_column: str | None, max_length: int,
           labels: list[str] | None, label_column: str | None) -> Examples:
    """[CLS] text [SEP] (pair [SEP]) ids padded to `max_length`; longer texts are truncated, counted."""
    n = len(rows)
    ids = np.full((n, max_length), tok.pad_id, np.int32)
    mask = np.zeros((n, max_length), np.int32)
    segments = np.zeros((n, max_length), np.int32)
    firsts = tok.encode_batch([str(r[text_column]) for r in rows])
    seconds = tok.encode_batch([str(r[pair_column]) for r in rows]) if pair_column else [[] for _ in rows]
    truncated = 0
    budget = max_length - (3 if pair_column else 2)
    for i, (a, b) in enumerate(zip(firsts, seconds)):
        if len(a) + len(b) > budget:
            truncated += 1
            while len(a) + len(b) > budget:
                (a if len(a) >= len(b) else b).pop()
        row = [tok.cls_id] + a + [tok.sep_id] + (b + [tok.sep_id] if pair_column else [])
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
        segments[i, len(a) + 2:len(row)] = 1
    label_ids = np.zeros(n, np.int32)
    if label_column:
        index = {name: k for k, name in enumerate(labels)}
        for i, r in enumerate(rows):
            name = str(r[label_column])
            if name not in index:
                raise ValueError(f"label {name!r} (row {i + 1}) did not occur in the training data {labels}")
            label_ids[i] = index[name]
    return Examples(ids, mask, segments, label_ids, truncated)


def scores(confusion: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro-F1 from a [true, predicted] confusion matrix of counts."""
    confusion = np.asarray(confusion, np.float64)
    true_positives = np.diag(confusion)
    predicted, actual = confusion.sum(0), confusion.sum(1)
    f1 = np.where(true_positives > 0, 2 * true_positives / np.maximum(predicted + actual, 1e-12), 0.0)
    return float(true_positives.sum() / max(confusion.sum(), 1e-12)), float(f1.mean())


def batch_indices(count: int, global_batch: int, seed: int | None, epoch: int = 0) -> np.ndarray:
    """[batches, global_batch] example indices of one epoch (shuffled by `seed` and `epoch`, or in
    order when `seed` is None); the last batch is filled with -1, which the steps weight 0."""
    order = np.arange(count) if seed is None else np.random.default_rng([seed, epoch]).permutation(count)
    batches = -(-count // global_batch)
    return np.concatenate([order, np.full(batches * global_batch - count, -1)]).reshape(batches, global_batch)


def host_batch(examples: Examples, indices: np.ndarray, process_index: int, process_count: int) -> dict:
    """This host's rows of one global batch: ids, mask, segments, labels and 0/1 example weights."""
    rows = np.array_split(indices, process_count)[process_index]
    take = np.maximum(rows, 0)
    return {"input_ids": examples.input_ids[take], "input_mask": examples.input_mask[take],
            "segment_ids": examples.segment_ids[take], "labels": examples.labels[take],
            "weights": (rows >= 0).astype(np.float32)}
