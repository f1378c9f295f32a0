"""Streaming corpus readers: plain text, JSON lines and TensorFlow Datasets, with cleaning.

Every reader yields documents as lists of sentences and counts what it repaired or skipped in a
`CorpusStats`, so bad input is reported, never silently lost.
"""

from __future__ import annotations

import collections
import json
import re
import unicodedata
from typing import Iterable, Iterator

from bert_jax import fs
from bert_jax.data.input_files import check_input, is_json_lines, looks_binary, open_corpus

_SENTENCE_END = re.compile(r"(?<=[.!?。？！])\s+")
_BOM = "\ufeff"


class CorpusStats(collections.Counter):
    """Counts of documents, sentences, repairs and skipped lines (by reason)."""


def expand_inputs(patterns: Iterable[str]) -> list[str]:
    """Expands files and globs (local or URLs) into a sorted, de-duplicated list of absolute paths;
    tfds: names pass through."""
    files: list[str] = []
    for pattern in patterns:
        if pattern.startswith("tfds:"):
            files.append(pattern)
            continue
        path = fs.absolute(pattern)
        matches = fs.glob(path) if fs.has_magic(path) else [path]
        matches = [m for m in matches if not fs.isdir(m)]
        if not matches or not all(fs.exists(m) for m in matches):
            raise FileNotFoundError(f"--input {pattern}: no such file")
        files.extend(matches)
    if not files:
        raise ValueError("--input: no input files given")
    return list(dict.fromkeys(files))


def split_long(text: str, max_chars: int) -> list[str]:
    """Splits text longer than `max_chars` at the last space before the limit (hard cut if none)."""
    pieces = []
    while len(text) > max_chars:
        cut = text.rfind(" ", max_chars // 2, max_chars)
        cut = max_chars if cut <= 0 else cut
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        pieces.append(text)
    return pieces


def split_sentences(text: str, max_chars: int) -> list[str]:
    """Splits running text into sentences after sentence-final punctuation, then long ones by length."""
    sentences = []
    for paragraph in text.splitlines():
        for sentence in _SENTENCE_END.split(paragraph.strip()):
            sentences.extend(split_long(sentence, max_chars) if sentence else [])
    return sentences


def clean_line(raw: bytes, stats: CorpusStats) -> str | None:
    """Decodes one raw line: drops CR, NUL and BOM, replaces invalid UTF-8, rejects binary junk."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
        stats["crlf_line_endings"] += 1
    if b"\x00" in raw:
        stats["nul_bytes_removed"] += raw.count(b"\x00")
        raw = raw.replace(b"\x00", b"")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        stats["lines_with_invalid_utf8_repaired"] += 1
    if text.startswith(_BOM):
        text = text[1:]
        stats["byte_order_marks_removed"] += 1
    text = unicodedata.normalize("NFC", text).strip()
    if text and looks_binary(text):
        stats["skipped_binary_lines"] += 1
        return None
    return text


def read_plain_text(path: str, stats: CorpusStats, max_chars: int) -> Iterator[list[str]]:
    """One sentence per line, a blank line between documents."""
    document: list[str] = []
    for lines in _cleaned_line_blocks(path, stats):
        for text in lines:
            if text is None:
                continue
            if not text:
                if document:
                    yield document
                document = []
            elif len(text) > max_chars:
                stats["long_lines_split"] += 1
                document.extend(split_long(text, max_chars))
            else:
                document.append(text)
    if document:
        yield document


_BLOCK_BYTES = 1 << 22
_UNUSUAL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd\ufeff]")  # what clean_line repairs or counts


def _cleaned_line_blocks(path: str, stats: CorpusStats) -> Iterator[list[str | None]]:
    """The file's lines, cleaned, in blocks of about 4 MB. A block of plain UTF-8 text is decoded
    and normalised at once; a block with anything unusual goes through `clean_line` line by line."""
    with open_corpus(path) as f:
        rest = b""
        while block := f.read(_BLOCK_BYTES):
            data = rest + block
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                yield _clean_block(data[:cut], stats)
        if rest:
            yield _clean_block(rest, stats)


def _clean_block(block: bytes, stats: CorpusStats) -> list[str | None]:
    stats["bytes_read"] += len(block)
    raw_lines = block.split(b"\n")
    if block.endswith(b"\n"):
        raw_lines.pop()
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or b"\r" in block or _UNUSUAL.search(text):
        return [clean_line(raw, stats) for raw in raw_lines]
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    lines = text.split("\n")
    return [line.strip() for line in (lines[:-1] if block.endswith(b"\n") else lines)]


def read_json_lines(path: str, stats: CorpusStats, max_chars: int, text_field: str) -> Iterator[list[str]]:
    """One JSON object per line; `text_field` holds a whole document."""
    with open_corpus(path) as f:
        for raw in f:
            stats["bytes_read"] += len(raw)
            text = clean_line(raw.rstrip(b"\n"), stats)
            if not text:
                continue
            try:
                record = json.loads(text)
                body = record[text_field]
            except (json.JSONDecodeError, KeyError, TypeError):
                stats[f"skipped_json_lines_without_{text_field}"] += 1
                continue
            if isinstance(body, str) and body.strip():
                yield split_sentences(unicodedata.normalize("NFC", body), max_chars)


def read_tfds(name: str, stats: CorpusStats, max_chars: int, text_field: str) -> Iterator[list[str]]:
    """A TensorFlow Datasets text corpus such as `tfds:wikipedia/20230601.ko` (split 'train')."""
    name, _, split = name.removeprefix("tfds:").partition(":")
    try:
        import tensorflow_datasets as tfds

        dataset = tfds.load(name, split=split or "train", shuffle_files=False)
    except ModuleNotFoundError as error:  # e.g. apache_beam, which wikipedia's builder needs
        module = (error.name or str(error).splitlines()[0]).split(".")[0]
        raise ValueError(f"--input tfds:{name} needs the Python module '{module}', which is not installed "
                         f"(pip install {module.replace('_', '-')})") from None
    for record in tfds.as_numpy(dataset):
        if text_field not in record:
            raise ValueError(f"tfds:{name} has no field '{text_field}'; it has {sorted(record)}")
        text = unicodedata.normalize("NFC", bytes(record[text_field]).decode("utf-8", errors="replace"))
        if text.strip():
            yield split_sentences(text, max_chars)


def read_documents(inputs: list[str], stats: CorpusStats, max_chars: int = 2000,
                   text_field: str = "text") -> Iterator[list[str]]:
    """Documents (lists of sentences) from every input in order: .jsonl/.json as JSON lines,
    `tfds:NAME` from TensorFlow Datasets, anything else as plain text; gzip, bzip2 and xz files
    are decompressed. Every file is checked (`check_input`) before the first is read."""
    for path in inputs:
        if not path.startswith("tfds:"):
            check_input(path, text_field)
    for path in inputs:
        if path.startswith("tfds:"):
            documents = read_tfds(path, stats, max_chars, text_field)
        elif is_json_lines(path):
            documents = read_json_lines(path, stats, max_chars, text_field)
        else:
            documents = read_plain_text(path, stats, max_chars)
        for document in documents:
            stats["documents"] += 1
            stats["sentences"] += len(document)
            yield document
