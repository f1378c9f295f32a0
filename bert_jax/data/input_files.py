"""Input files of the corpus readers: opened (gzip, bzip2 and xz decompressed) and checked to be
UTF-8 text before any reading starts, so binary data, text in another encoding and JSON lines
without the text field are one-line errors naming the file, not a few junk examples."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import lzma
import re
import zlib
from typing import BinaryIO, Iterator

from bert_jax import fs

_JUNK = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ufffd]")  # control characters but tab, U+FFFD

# Compressed corpora are recognised by their magic bytes (whatever the file is called) and read
# through the standard library's decompressors.
_COMPRESSIONS = ((re.compile(rb"\x1f\x8b"), gzip, "gzip"),
                 (re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)"), bz2, "bzip2"),
                 (re.compile(rb"\xfd7zXZ\x00"), lzma, "xz"))
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")
# Files that are certainly not text, named in the error (beyond the byte statistics below).
_NOT_TEXT = ((b"PK\x03\x04", "a ZIP archive (unzip it first)"),
             (b"\x28\xb5\x2f\xfd", "Zstandard-compressed data (decompress it with `zstd -d` first)"),
             (b"%PDF-", "a PDF document"), (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
             (b"7z\xbc\xaf", "a 7-Zip archive"), (b"\x7fELF", "an executable"),
             (b"SQLite format 3\x00", "an SQLite database"))
_SAMPLE_BYTES = 1 << 16  # what is inspected of every input before reading starts
MAX_JUNK_SHARE = 0.3  # control characters and invalid UTF-8 beyond this share: not text
_MAX_INVALID_NON_ASCII = 0.3  # more of the non-ASCII characters invalid UTF-8: another encoding
_MIN_INVALID = 8  # ... counted from this many invalid sequences on (a few stray bytes are repaired)


def looks_binary(text: str) -> bool:
    """Whether more than MAX_JUNK_SHARE of `text` are control characters or U+FFFD."""
    return len(_JUNK.findall(text)) > MAX_JUNK_SHARE * len(text)


@contextlib.contextmanager
def open_corpus(path: str) -> Iterator[BinaryIO]:
    """The bytes of `path`, decompressed when they are gzip, bzip2 or xz data; a damaged
    compressed stream is a ValueError naming the file."""
    with fs.open_binary(path) as raw:
        head = _peek(raw, 10)
        found = [(module, name) for magic, module, name in _COMPRESSIONS if magic.match(head)]
        if not found:
            yield raw
            return
        module, name = found[0]
        try:
            with module.open(raw, "rb") as stream:
                yield stream
        except (EOFError, OSError, lzma.LZMAError, zlib.error) as error:
            raise ValueError(f"{path}: damaged {name} data: {error}") from None


def _peek(stream: BinaryIO, size: int) -> bytes:
    if hasattr(stream, "peek"):
        return stream.peek(size)[:size]
    head = stream.read(size)
    stream.seek(0)
    return head


def is_json_lines(path: str) -> bool:
    """Whether `path` (compressed or not) holds JSON lines, by its name."""
    for suffix in _COMPRESSION_SUFFIXES:
        path = path.removesuffix(suffix)
    return path.endswith((".jsonl", ".json", ".jsonl.txt"))


def check_input(path: str, text_field: str | None = "text") -> None:
    """Inspects the first 64 KB of an input (decompressed) before any reading: binary data, text
    in another encoding than UTF-8 (named, with the `iconv` command that converts it) and JSON
    lines whose complete lines there lack `text_field` (None: not checked) are ValueErrors naming
    the file."""
    with open_corpus(path) as stream:
        sample = stream.read(_SAMPLE_BYTES)
    for magic, what in _NOT_TEXT:
        if sample.startswith(magic):
            raise ValueError(f"{path}: {what}, not text")
    whole_file = len(sample) < _SAMPLE_BYTES
    complete = sample if whole_file else sample[:sample.rfind(b"\n") + 1] or sample  # no cut character
    text = complete.decode("utf-8", errors="replace")
    invalid = text.count("\ufffd") - complete.count("\ufffd".encode())
    non_ascii = sum(1 for ch in text if ord(ch) > 0x7F)
    junk = len(_JUNK.findall(text)) - text.count("\n") - text.count("\r")  # line ends are not junk
    if junk > MAX_JUNK_SHARE * len(text) or (
            invalid >= _MIN_INVALID and invalid > _MAX_INVALID_NON_ASCII * non_ascii):
        raise ValueError(_not_utf8_text(path, sample, junk, len(text)))
    if text_field is not None and is_json_lines(path) and (whole_file or b"\n" in sample) and text.strip():
        _check_json_field(path, text, text_field)


def _not_utf8_text(path: str, sample: bytes, junk: int, chars: int) -> str:
    """The error for a sample that is not UTF-8 text: another encoding if one decodes it, else binary."""
    import charset_normalizer  # a statistical detector; our own guess would know fewer encodings

    best = charset_normalizer.from_bytes(sample).best()
    if best is not None and best.encoding.replace("_", "") not in ("utf8", "ascii"):
        encoding = best.encoding.replace("_", "-")
        return (f"{path}: the text is not UTF-8; it looks like {encoding}"
                f"{' (EUC-KR)' if encoding == 'cp949' else ''}: convert it first, e.g. "
                f"`iconv -f {encoding} -t utf-8 {path} > {path}.utf8`")
    return (f"{path}: binary data, not text ({100 * junk / max(1, chars):.0f}% of its first "
            f"{len(sample) // 1024 or 1} KB are control bytes or invalid UTF-8)")


def _check_json_field(path: str, text: str, text_field: str) -> None:
    fields: set[str] = set()
    parsed = 0
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            parsed += 1
            if text_field in record:
                return
            fields.update(record)
    if not parsed:
        raise ValueError(f"{path}: no JSON object in its first lines; not JSON lines (a JSON object per line)")
    raise ValueError(f"{path}: no record has the field '{text_field}' (--text-field); "
                     f"the records have {sorted(fields)}")
