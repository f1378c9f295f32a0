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


def _entry(name: str, feature: bytes) -> bytes:
    return _field(1, _field(1, name.encode()) + _field(2, feature))


def serialize_examples(examples: list[dict[str, np.ndarray]]) -> list[bytes]:
    """Serialised `tf.train.Example`s; integer arrays become int64 lists, float arrays float lists.

    The varints of all integer features of all examples are encoded in one vectorised pass.
    """
    arrays = [[np.atleast_1d(v) for v in example.values()] for example in examples]
    is_int = [[not np.issubdtype(a.dtype, np.floating) for a in row] for row in arrays]
    ints = [a for row, flags in zip(arrays, is_int) for a, flag in zip(row, flags) if flag]
    if ints:
        lengths, blob = _varint_lengths_and_bytes(np.concatenate(ints))
        ends = np.cumsum(lengths)[np.cumsum([len(a) for a in ints]) - 1]
        starts = np.concatenate([[0], ends[:-1]])
    k = 0
    records = []
    for example, row, flags in zip(examples, arrays, is_int):
        entries = []
        for name, values, flag in zip(example, row, flags):
            if flag:
                feature = _field(3, _field(1, blob[starts[k]:ends[k]]))  # Feature.int64_list
                k += 1
            else:
                feature = _field(2, _field(1, values.astype("<f4").tobytes()))  # Feature.float_list
            entries.append(_entry(name, feature))
        records.append(_field(1, b"".join(entries)))
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
