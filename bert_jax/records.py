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


_SMALL_VARINTS = [_encode_varint(i) for i in range(1 << 14)]


def _varint(value: int) -> bytes:
    return _SMALL_VARINTS[value] if value < (1 << 14) else _encode_varint(value)


def _varint_lengths_and_bytes(values: np.ndarray) -> tuple[np.ndarray, bytes]:
    """Bytes per value and the concatenated varints of non-negative integers."""
    v = np.asarray(values, dtype=np.int64)
    if v.size and v.min() < 0:
        raise ValueError("only non-negative integers are supported")
    v = v.astype(np.uint64)
    width = max(1, (int(v.max(initial=0)).bit_length() + 6) // 7)  # 7-bit groups of the largest
    shifts = _SHIFTS[:width]
    groups = (v[:, None] >> shifts[None, :]) & np.uint64(0x7F)
    n = 1 + ((v[:, None] >> shifts[None, 1:]) > 0).sum(axis=1)  # 7-bit groups per value
    used = np.arange(width)[None, :] < n[:, None]
    more = np.arange(width)[None, :] < (n - 1)[:, None]
    data = (groups | np.where(more, np.uint64(0x80), np.uint64(0))).astype(np.uint8)
    return n, data[used].tobytes()


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature_payloads(values: list[np.ndarray]) -> list[bytes]:
    """`Feature` messages for one feature across examples (varints of all of them in one pass)."""
    if np.issubdtype(values[0].dtype, np.floating):
        return [_field(2, _field(1, v.astype("<f4").tobytes())) for v in values]  # Feature.float_list
    flat = np.concatenate(values)
    if flat.size == 0 or (flat.min() >= 0 and flat.max() < 0x80):
        blob, byte_lengths = flat.astype(np.uint8).tobytes(), np.ones(flat.size, np.int64)
    else:
        byte_lengths, blob = _varint_lengths_and_bytes(flat)
    ends = np.concatenate([[0], np.cumsum(byte_lengths)])[np.cumsum([len(v) for v in values])]
    starts = np.concatenate([[0], ends[:-1]])
    return [_field(3, _field(1, blob[a:b])) for a, b in zip(starts.tolist(), ends.tolist())]


def serialize_examples(examples: list[dict[str, np.ndarray]]) -> list[bytes]:
    """Serialised `tf.train.Example`s (all with the same feature names); integer arrays become
    int64 lists, float arrays float lists."""
    if not examples:
        return []
    names = list(examples[0])
    if any(list(example) != names for example in examples):
        raise ValueError("all examples must have the same features in the same order")
    headers = [_field(1, name.encode()) for name in names]
    columns = [_feature_payloads([np.atleast_1d(e[name]) for e in examples]) for name in names]
    records = []
    for features in zip(*columns):
        entries = b"".join(_field(1, header + _field(2, feature)) for header, feature in zip(headers, features))
        records.append(_field(1, entries))
    return records


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
