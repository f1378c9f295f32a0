"""`tf.train.Example` records and TFRecord framing, written without TensorFlow.

Data-preparation workers stay light and fast (no TensorFlow import, no protobuf object per
value): the protobuf wire format of an Example holding int64 and float lists is written
directly, with varints encoded in numpy, and records are framed with their masked CRC32C as
TFRecord files expect. Tests check both against TensorFlow's own reader and writer.
"""

from __future__ import annotations

import struct

import google_crc32c
import numpy as np

_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bytes per value and the concatenated varints (uint8) of non-negative integers."""
    v = np.asarray(values)
    if v.dtype.kind not in "iu":
        v = v.astype(np.int64)
    if v.size and v.min() < 0:
        raise ValueError("only non-negative integers are supported")
    largest = int(v.max(initial=0))
    if largest < 1 << 7:
        return np.ones(v.size, np.int64), v.astype(np.uint8)
    if largest < 1 << 14:  # the common case (token ids below 16384): one or two bytes per value
        two = v >= 1 << 7
        pairs = np.empty((v.size, 2), np.uint8)
        pairs[:, 0] = (v & 0x7F) | (two << 7)
        pairs[:, 1] = v >> 7
        keep = np.ones((v.size, 2), bool)
        keep[:, 1] = two
        return 1 + two.astype(np.int64), pairs[keep]
    v = v.astype(np.uint64)
    width = (largest.bit_length() + 6) // 7  # 7-bit groups of the largest
    shifts = _SHIFTS[:width]
    groups = (v[:, None] >> shifts[None, :]) & np.uint64(0x7F)
    n = 1 + ((v[:, None] >> shifts[None, 1:]) > 0).sum(axis=1)  # 7-bit groups per value
    used = np.arange(width)[None, :] < n[:, None]
    more = np.arange(width)[None, :] < (n - 1)[:, None]
    data = (groups | np.where(more, np.uint64(0x80), np.uint64(0))).astype(np.uint8)
    return n, data[used]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _constant(data: bytes, count: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tile(np.frombuffer(data, np.uint8), count), np.full(count, len(data), np.int64)


def _join_columns(columns: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row concatenation of ragged byte columns, each (bytes of all rows, bytes per row),
    as one gather: returns the joined bytes and the bytes per row."""
    lengths = np.stack([length for _, length in columns], axis=1)
    bases = np.cumsum([0] + [len(blob) for blob, _ in columns[:-1]])
    starts = np.stack([np.cumsum(length) - length + base for (_, length), base in zip(columns, bases)], axis=1)
    flat_lengths, flat_starts = lengths.reshape(-1), starts.reshape(-1)
    out_starts = np.cumsum(flat_lengths) - flat_lengths
    index = np.repeat(flat_starts - out_starts, flat_lengths) + np.arange(int(flat_lengths.sum()))
    return np.concatenate([blob for blob, _ in columns])[index], lengths.sum(axis=1)


def _varint_column(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths, data = _varints(values)
    return data, lengths


def _list_payload(values: np.ndarray, counts: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The Feature tag (float_list or int64_list), and the packed values of every example with
    their byte counts."""
    if np.issubdtype(values.dtype, np.floating):
        return b"\x12", values.astype("<f4").view(np.uint8), counts * 4
    byte_lengths, blob = _varints(values)
    ends = np.concatenate([[0], np.cumsum(byte_lengths)])[np.cumsum(counts)]
    return b"\x1a", blob, ends - np.concatenate([[0], ends[:-1]])


def _prefixed_length(length: np.ndarray) -> np.ndarray:
    """Bytes of a length-delimited field whose payload has `length` bytes (1-byte tag)."""
    return 1 + _varints(length)[0] + length


def serialize_columns(columns: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[bytes]:
    """Serialised `tf.train.Example`s from {feature: (values of all examples, values per example)}.
    Every length prefix is computed with numpy and all bytes are laid out in one gather; Python
    only cuts the result into records."""
    count = len(next(iter(columns.values()))[1])
    parts, features_length = [], 0
    for name, (values, counts) in columns.items():
        tag, blob, payload = _list_payload(np.asarray(values), np.asarray(counts, np.int64))
        packed = _prefixed_length(payload)  # Int64List / FloatList {packed values}
        feature = _prefixed_length(packed)  # Feature {tag: list}
        key = _field(1, name.encode())
        entry = len(key) + _prefixed_length(feature)  # map entry {key, value: Feature}
        features_length = features_length + _prefixed_length(entry)
        header = _join_columns([_constant(b"\x0a", count), _varint_column(entry), _constant(key + b"\x12", count),
                                _varint_column(feature), _constant(tag, count), _varint_column(packed),
                                _constant(b"\x0a", count), _varint_column(payload)])
        parts += [header, (blob, payload)]
    record_header = _join_columns([_constant(b"\x0a", count), _varint_column(features_length)])
    blob, lengths = _join_columns([record_header] + parts)
    data = blob.tobytes()
    ends = np.cumsum(lengths).tolist()
    return [data[a:b] for a, b in zip([0] + ends[:-1], ends)]


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def frame_records(records: list[bytes]) -> bytes:
    """The bytes of a TFRecord file holding `records` (length, CRC of length, data, CRC of data)."""
    out = []
    for record in records:
        length = struct.pack("<Q", len(record))
        out += [length, _masked_crc(length), record, _masked_crc(record)]
    return b"".join(out)
