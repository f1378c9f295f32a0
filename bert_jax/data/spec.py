"""The typed data contract between prepare-data, the input pipeline, the steps and the trainer.

`DataSpec` is what a prepared data directory promises, read once from its `metadata.json`
(`DataSpec.read`); every later stage takes the spec, never the raw dict. `BatchSpec` is the
layout of one batch (keys, per-example shapes, dtypes): the input pipeline yields it, the
tasks' steps and initialisation consume it, benchmarks and tests build batches from it.
No JAX and no TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from bert_jax import fs
from bert_jax.data.instances import PAIR_TASKS
from bert_jax.data.tokenizer import SPECIAL_TOKENS  # every tokenizer has them; the spec holds their ids

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
MASKING = ("dynamic", "static")


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """Keys, per-example shapes and numpy dtype names of a batch; every array has a leading row axis.

    `fields` is ((key, shape, dtype), ...) in the order the pipeline yields them, e.g.
    ("input_ids", (128,), "int32")."""

    fields: tuple[tuple[str, tuple[int, ...], str], ...]

    @classmethod
    def pretraining(cls, max_seq_length: int, max_predictions_per_seq: int) -> BatchSpec:
        """MLM + NSP/SOP: ids, mask and segments [S]; masked positions, label ids, weights [P]; the
        pair label and a 0/1 example weight (0 on the rows that pad a host's last eval batch)."""
        seq, slots = (max_seq_length,), (max_predictions_per_seq,)
        return cls((("input_ids", seq, "int32"), ("input_mask", seq, "int32"), ("segment_ids", seq, "int32"),
                    ("masked_lm_positions", slots, "int32"), ("masked_lm_ids", slots, "int32"),
                    ("masked_lm_weights", slots, "float32"), ("next_sentence_labels", (), "int32"),
                    ("example_weights", (), "float32")))

    @classmethod
    def classification(cls, max_length: int) -> BatchSpec:
        """Sequence classification: ids, mask and segments [L], a label id and a 0/1 weight (0 on the
        rows that fill the last batch of an epoch)."""
        seq = (max_length,)
        return cls((("input_ids", seq, "int32"), ("input_mask", seq, "int32"), ("segment_ids", seq, "int32"),
                    ("labels", (), "int32"), ("weights", (), "float32")))

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for key, _, _ in self.fields)

    def shapes(self, rows: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """{key: (shape with `rows` rows, numpy dtype)}."""
        return {key: ((rows,) + shape, np.dtype(dtype)) for key, shape, dtype in self.fields}

    def zeros(self, rows: int, fill: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        """A batch of `rows` rows of zeros (`fill`: another constant for some keys, e.g. the [PAD] id)."""
        fill = fill or {}
        return {key: np.full(shape, fill.get(key, 0), dtype) for key, (shape, dtype) in self.shapes(rows).items()}

    def check(self, batch: dict, what: str = "batch") -> None:
        """ValueError naming the key when `batch` lacks a key, has another, or a wrong shape or dtype."""
        if set(batch) != set(self.keys):
            raise ValueError(f"{what} has keys {sorted(batch)}, the batch spec {sorted(self.keys)}")
        rows = len(batch[self.keys[0]])
        for key, (shape, dtype) in self.shapes(rows).items():
            found = np.asarray(batch[key])
            if found.shape != shape or found.dtype != dtype:
                raise ValueError(f"{what}[{key!r}] is {found.dtype}{list(found.shape)}, the batch spec says "
                                 f"{dtype}{list(shape)}")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of the prepared data: examples in all shards, documents, (shard file, examples)."""

    examples: int
    documents: int
    files: tuple[tuple[str, int], ...]


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a prepared data directory holds, as `prepare-data` recorded it in metadata.json.

    `max_predictions_per_seq` is the one source of the masked-slot count: the data's masking,
    the model's MLM head input and the batch layout all take it from here."""

    max_seq_length: int  # tokens per example, [CLS] and [SEP]s included
    max_predictions_per_seq: int  # masked slots per example (padded with weight 0)
    vocab_size: int  # the tokenizer's vocabulary
    special_ids: dict[str, int]  # '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]' -> id
    pair_task: str  # 'nsp', 'sop' or 'none'
    masking: str  # 'dynamic' (masked by the input pipeline) or 'static' (masks in the shards)
    mask_prob: float  # share of real tokens masked by prepare-data (static masking)
    splits: dict[str, Split]  # 'train', 'eval'
    tokenizer_fingerprint: str  # the tokenizer the shards were made with
    tokenizer_directory: str = "tokenizer"  # relative to the data directory
    arguments: dict = dataclasses.field(default_factory=dict)  # prepare-data's arguments, as recorded
    path: str = ""  # the metadata.json this spec was read from ('' when built in code)

    @property
    def pad_id(self) -> int:
        return self.special_ids["[PAD]"]

    @property
    def has_eval(self) -> bool:
        return self.splits["eval"].examples > 0

    def batch_spec(self) -> BatchSpec:
        return BatchSpec.pretraining(self.max_seq_length, self.max_predictions_per_seq)

    @classmethod
    def read(cls, data_dir: str) -> DataSpec:
        """The spec of a prepared data directory (local or a URL). FileNotFoundError when it has no
        metadata.json; a one-line ValueError naming the file and the field when a field is missing or
        of the wrong type, or the format version is another."""
        path = os.path.join(fs.absolute(data_dir), METADATA_FILE)
        if not fs.exists(path):
            raise FileNotFoundError(f"--data {data_dir}: no {METADATA_FILE}; not a finished "
                                    f"`bert-jax prepare-data` output")
        return cls.read_file(path)

    @classmethod
    def read_file(cls, path: str) -> DataSpec:
        """The spec in a metadata.json at `path` (also a workdir's copy, data_metadata.json); errors as `read`."""
        try:
            values = json.loads(fs.read_text(path))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error})") from None
        return cls.from_json(values, path)

    @classmethod
    def from_json(cls, values: dict, path: str = METADATA_FILE) -> DataSpec:
        """The spec from metadata.json's parsed content; `path` names the file in errors."""
        field = _Reader(values, path)
        if values.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {values.get('format_version')!r}, expected {FORMAT_VERSION}")
        seq = field.integer("max_seq_length", low=3)
        specials = field.get("special_ids", dict)
        for name in SPECIAL_TOKENS:
            field.integer(f"special_ids.{name}", low=0)
        splits = {}
        for split in ("train", "eval"):
            files = []
            for index, _ in enumerate(field.get(f"splits.{split}.files", list)):
                files.append((field.get(f"splits.{split}.files.{index}.name", str),
                              field.integer(f"splits.{split}.files.{index}.examples", low=0)))
            splits[split] = Split(field.integer(f"splits.{split}.examples", low=0),
                                  field.integer(f"splits.{split}.documents", low=0), tuple(files))
        tokenizer = field.get("tokenizer", dict)
        return cls(
            max_seq_length=seq, max_predictions_per_seq=field.integer("max_predictions_per_seq", low=1, high=seq),
            vocab_size=field.integer("vocab_size", low=1), special_ids=dict(specials),
            pair_task=field.choice("pair_task", PAIR_TASKS), masking=field.choice("masking", MASKING),
            mask_prob=field.number("mask_prob"), splits=splits,
            tokenizer_fingerprint=field.get("tokenizer.fingerprint", str),
            tokenizer_directory=tokenizer.get("directory", "tokenizer"),
            arguments=dict(values.get("arguments", {})), path=path)

    @classmethod
    def synthetic(cls, vocab_size: int, max_seq_length: int, max_predictions_per_seq: int,
                  pair_task: str = "nsp") -> DataSpec:
        """A spec for data made in code (benchmarks, tests): no shards, the default special ids."""
        empty = Split(0, 0, ())
        return cls(max_seq_length, max_predictions_per_seq, vocab_size,
                   {name: i for i, name in enumerate(SPECIAL_TOKENS)}, pair_task, "dynamic", 0.15,
                   {"train": empty, "eval": empty}, tokenizer_fingerprint="")


class _Reader:
    """Typed access to dotted fields of metadata.json, with one-line errors naming file and field."""

    def __init__(self, values: dict, path: str):
        self.values, self.path = values, path

    def get(self, dotted: str, kind: type):
        node = self.values
        for part in dotted.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise ValueError(f"{self.path}: field '{dotted}' is missing")
        if not isinstance(node, kind) or (kind is not bool and isinstance(node, bool)):
            raise ValueError(f"{self.path}: field '{dotted}' must be {_KIND_NAMES[kind]}, got {node!r}")
        return node

    def integer(self, dotted: str, low: int | None = None, high: int | None = None) -> int:
        value = self.get(dotted, int)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = " and ".join(b for b in (f">= {low}" if low is not None else "",
                                              f"<= {high}" if high is not None else "") if b)
            raise ValueError(f"{self.path}: field '{dotted}' must be {bounds}, got {value}")
        return value

    def number(self, dotted: str) -> float:
        return float(self.get(dotted, (int, float)))

    def choice(self, dotted: str, choices: tuple[str, ...]) -> str:
        value = self.get(dotted, str)
        if value not in choices:
            raise ValueError(f"{self.path}: field '{dotted}' must be one of {', '.join(choices)}, got {value!r}")
        return value


_KIND_NAMES = {int: "an integer", str: "a string", dict: "an object", list: "a list", (int, float): "a number"}
