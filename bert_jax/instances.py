"""Tokenized documents -> pretraining instances: NSP / SOP sentence pairs or single segments.

The algorithm of google-research/bert's `create_instances_from_document`, with its known flaws
fixed: a random next segment always comes from a *different* document, unused segments are put
back, and SOP (ALBERT's sentence-order prediction) is available.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

PAIR_TASKS = ("nsp", "sop", "none")


@dataclasses.dataclass
class Instance:
    """One example before masking; next_sentence_label 0 = B follows A, 1 = random (NSP) / swapped (SOP)."""

    input_ids: np.ndarray
    segment_ids: np.ndarray
    next_sentence_label: int


def split_long_segment(tokens: np.ndarray, word_starts: np.ndarray, limit: int) -> list[np.ndarray]:
    """Cuts a tokenized sentence longer than `limit` at word starts into pieces of at most `limit`."""
    pieces = []
    start = 0
    while len(tokens) - start > limit:
        starts = np.flatnonzero(word_starts[start + 1:start + limit + 1]) + start + 1
        cut = int(starts[-1]) if len(starts) else start + limit
        pieces.append(tokens[start:cut])
        start = cut
    pieces.append(tokens[start:])
    return pieces


def truncated_lengths(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """Lengths left when tokens are dropped one at a time from the longer segment (B on ties)
    until both fit in `max_tokens`."""
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return len_a, len_b
    gap = abs(len_a - len_b)
    if gap >= excess:
        return (len_a - excess, len_b) if len_a > len_b else (len_a, len_b - excess)
    rest = excess - gap  # both are equal now; removals alternate, B first
    equal = min(len_a, len_b)
    return equal - rest // 2, equal - (rest + 1) // 2


def _truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int, rng: random.Random):
    """Drops tokens from the longer segment until both fit, each at its front or back at random."""
    keep_a, keep_b = truncated_lengths(len(a), len(b), max_tokens)
    out = []
    for tokens, keep in ((a, keep_a), (b, keep_b)):
        dropped = len(tokens) - keep
        front = rng.getrandbits(dropped).bit_count() if dropped else 0  # Binomial(dropped, 1/2)
        out.append(tokens[front:front + keep])
    return out[0], out[1]


_EMPTY = np.zeros(0, np.int32)


def _concat(segments: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(segments) if segments else _EMPTY


def create_instances(documents: list[list[np.ndarray]], doc_index: int, max_seq_length: int,
                     short_seq_prob: float, pair_task: str, rng: random.Random, cls_id: int,
                     sep_id: int) -> list[Instance]:
    """Instances from `documents[doc_index]` (a list of token arrays, one per sentence)."""
    document = documents[doc_index]
    max_tokens = max_seq_length - (3 if pair_task != "none" else 2)
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_tokens)
    instances = []
    chunk: list[np.ndarray] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        if i == len(document) - 1 or chunk_length >= target:
            if pair_task == "none":
                tokens_a, tokens_b, label = _concat(chunk), _EMPTY, 0
            else:
                tokens_a, tokens_b, label, unused = _make_pair(chunk, documents, doc_index, target,
                                                               pair_task, rng)
                i -= unused
            tokens_a, tokens_b = _truncate_pair(tokens_a, tokens_b, max_tokens, rng)
            if len(tokens_a) and (len(tokens_b) or pair_task == "none"):
                instances.append(_assemble(tokens_a, tokens_b, label, cls_id, sep_id))
            chunk, chunk_length = [], 0
        i += 1
    return instances


def _make_pair(chunk, documents, doc_index, target, pair_task, rng):
    """Splits `chunk` into segments A and B; returns (a, b, label, segments put back)."""
    if pair_task == "sop" and len(chunk) == 1:
        tokens = _concat(chunk)
        if len(tokens) < 2:
            return tokens, _EMPTY, 0, 0
        cut = rng.randint(1, len(tokens) - 1)
        a, b = tokens[:cut], tokens[cut:]
        return (b, a, 1, 0) if rng.random() < 0.5 else (a, b, 0, 0)
    a_end = 1 if len(chunk) < 2 else rng.randint(1, len(chunk) - 1)
    a = _concat(chunk[:a_end])
    if pair_task == "sop":
        b = _concat(chunk[a_end:])
        return (b, a, 1, 0) if rng.random() < 0.5 else (a, b, 0, 0)
    if (len(chunk) == 1 or rng.random() < 0.5) and len(documents) > 1:
        other = rng.randrange(len(documents) - 1)
        other += other >= doc_index  # never the same document
        random_doc = documents[other]
        taken, taken_length = [], 0
        for sentence in random_doc[rng.randrange(len(random_doc)):]:
            taken.append(sentence)
            taken_length += len(sentence)
            if taken_length >= target - len(a):
                break
        return a, _concat(taken), 1, len(chunk) - a_end
    return a, _concat(chunk[a_end:]), 0, 0


def _assemble(tokens_a: np.ndarray, tokens_b: np.ndarray, label: int, cls_id: int, sep_id: int) -> Instance:
    parts = [[cls_id], tokens_a, [sep_id]] + ([tokens_b, [sep_id]] if len(tokens_b) else [])
    ids = np.concatenate(parts).astype(np.int32)
    segments = np.zeros(len(ids), np.int32)
    segments[len(tokens_a) + 2:] = 1
    return Instance(ids, segments, label)
