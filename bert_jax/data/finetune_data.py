"""Labelled text for fine-tuning: reading TSV/CSV/JSON lines, encoding to padded id arrays,
the example order of each epoch, and accuracy / macro-F1 from a confusion matrix."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Iterator

import numpy as np

from bert_jax.data import input_files, tokenizer as tokenizer_lib


@dataclasses.dataclass
class Examples:
    """Encoded examples: ids, mask and segments [N, S], label ids [N], and truncation count."""

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    labels: np.ndarray
    truncated: int


@dataclasses.dataclass
class Table:
    """The rows of a labelled file, the file line of each row, and the bad rows skipped."""

    path: str
    rows: list[dict]
    lines: list[int]
    skipped: int = 0


def read_table(path: str, columns: list[str], label_column: str | None = None,
               skip_bad_rows: bool = False) -> Table:
    """Rows of a .tsv, .csv or .jsonl file (gzip, bzip2 or xz compressed too), parsed strictly.

    Every name in `columns` (and `label_column`) must be a column. A row whose field count differs
    from the header's (a TAB inside a TSV text), a JSON line that is not an object holding every
    column, and an empty label are ValueErrors naming the line; with `skip_bad_rows` such rows are
    skipped and counted in `Table.skipped`. Binary data and text that is not UTF-8 are errors too.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    columns = columns + ([label_column] if label_column else [])
    input_files.check_input(path, text_field=None)  # unknown columns are reported below
    with input_files.open_corpus(path) as raw:
        # newline="\n": a bare \r inside a text is not a line end
        records = list(_records(path, io.TextIOWrapper(raw, encoding="utf-8", newline="\n")))
    return _table(path, records, columns, label_column, skip_bad_rows, "line",
                  "fix the row, or skip such rows with --skip-bad-rows")


def _table(name: str, records: list, columns: list[str], label_column: str | None, skip_bad_rows: bool,
           unit: str, hint: str) -> Table:
    """The Table of (line or row number, row or None, problem or None) records: unknown columns,
    then each row's problem, raise a ValueError naming `name` and the `unit` ('line' or 'row')."""
    good = [row for _, row, problem in records if problem is None]
    if not good:
        raise ValueError(f"{name}: no rows")
    missing = [c for c in dict.fromkeys(columns) if all(c not in row for row in good)]
    if missing:
        raise ValueError(f"{name}: unknown column(s) {missing}; it has {sorted(good[0])}")
    table = Table(name, [], [])
    for line, row, problem in records:
        problem = problem or _row_problem(row, columns, label_column)
        if not problem:
            table.rows.append(row)
            table.lines.append(line)
        elif skip_bad_rows:
            table.skipped += 1
        else:
            raise ValueError(f"{name}: {unit} {line}: {problem}; {hint}")
    return table


def load_table(source, columns: list[str], label_column: str | None = None, skip_bad_rows: bool = False,
               name: str = "data") -> Table:
    """Rows of a file path (`read_table`) or of Python data: a pandas DataFrame, a Hugging Face
    `datasets.Dataset`, a mapping of column name -> list of values (one per row), or a list of row
    dicts. Values keep their types (int labels stay int; numpy scalars become Python ones). Rows of
    Python data are checked as a file's rows are (unknown columns, missing values, empty labels);
    errors name `name` (e.g. 'train') and the 1-based row."""
    if isinstance(source, (str, os.PathLike)):
        return read_table(os.fspath(source), columns, label_column, skip_bad_rows)
    label = f"{name} data ({type(source).__name__})"
    records = [(number, row, None) for number, row in enumerate(_python_rows(source, label), 1)]
    return _table(label, records, columns + ([label_column] if label_column else []), label_column,
                  skip_bad_rows, "row", "fix the row, or pass skip_bad_rows=True")


def _python_rows(source, label: str) -> list[dict]:
    """Row dicts of a DataFrame, a datasets.Dataset, a mapping of columns or a list of dicts."""
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas.DataFrame
        rows = source.to_dict("records")
    elif hasattr(source, "to_list") and hasattr(source, "column_names"):  # datasets.Dataset
        rows = source.to_list()
    elif isinstance(source, dict):
        lengths = {column: len(values) for column, values in source.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{label}: columns of different lengths {lengths}")
        rows = [dict(zip(source, values)) for values in zip(*source.values())]
    elif isinstance(source, (list, tuple)) and all(isinstance(row, dict) for row in source):
        rows = list(source)
    else:
        raise TypeError(f"{label}: expected a file path, a DataFrame, a datasets.Dataset, a dict of columns "
                        f"or a list of row dicts")
    return [{k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()} for row in rows]


def _row_problem(row: dict, columns: list[str], label_column: str | None) -> str | None:
    absent = [c for c in columns if row.get(c) is None]
    if absent:
        return f"lacks column(s) {absent}"
    if label_column and not str(row[label_column]).strip():
        return f"empty label in column '{label_column}'"
    return None


def _records(path: str, f) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, row or None, problem or None) of every non-blank row after the header."""
    if input_files.is_json_lines(path):
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                yield line, None, f"invalid JSON ({error.msg})"
                continue
            yield (line, row, None) if isinstance(row, dict) else (line, None, "not a JSON object")
        return
    if path.endswith(".tsv"):  # TSV has no quoting: '"' and '\r' in a review are just characters
        lines = ((n, text.rstrip("\n").removesuffix("\r").split("\t")) for n, text in enumerate(f, 1))
        separator = "a TAB"
    else:
        reader = csv.reader(f)
        lines = ((reader.line_num, fields) for fields in reader)
        separator = "an unquoted comma"
    header = None
    for line, fields in lines:
        if not any(field.strip() for field in fields):
            continue
        if header is None:
            header = fields
        elif len(fields) != len(header):
            hint = f"; {separator} inside a text?" if len(fields) > len(header) else ""
            yield line, None, f"{len(fields)} fields where the header has {len(header)} ({', '.join(header)}){hint}"
        else:
            yield line, dict(zip(header, fields)), None


def label_names(table: Table, label_column: str, declared: list | None = None) -> list:
    """The label set of a training table: `declared` (in its order) or the sorted labels found.
    Labels keep the table's types (int labels stay int; a declared '1' names the found 1: labels
    are matched by their text). A label outside `declared` (naming the line) and fewer than two
    labels are ValueErrors."""
    found = {}
    for row in table.rows:
        found.setdefault(str(row[label_column]), row[label_column])
    if declared:
        check_labels(table, label_column, declared)
    if len(found) < 2:
        raise ValueError(f"{table.path}: every row has the label {next(iter(found))!r} (column "
                         f"'{label_column}'); a classifier needs at least two labels")
    if declared:
        return [found.get(str(name), name) for name in declared]
    return sorted(found.values(), key=lambda v: (isinstance(v, str), v))


def check_labels(table: Table, label_column: str, labels: list) -> None:
    """ValueError naming the file and line of the first label that is not in `labels` (by text)."""
    known = {str(name) for name in labels}
    for row, line in zip(table.rows, table.lines):
        if str(row[label_column]) not in known:
            raise ValueError(f"{table.path}: line {line}: label {str(row[label_column])!r} is not one of "
                             f"the labels {labels}")


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
        index = {str(name): k for k, name in enumerate(labels)}
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
