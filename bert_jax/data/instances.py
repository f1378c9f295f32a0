"""Tokenized documents -> pretraining instances: NSP / SOP sentence pairs, single segments, or
single segments packed across documents.

The algorithm of google-research/bert's `create_instances_from_document`, with its known flaws
fixed: a random next segment always comes from a *different* document, unused segments are put
back, and SOP (ALBERT's sentence-order prediction) is available.

A chunk's tokens lie in one flat array in which every document, and every run of consecutive
sentences, is a contiguous range. Documents are given as their sentence boundaries
(`[s0, s1, ..., sk]`: sentence i is `flat[s_i:s_i+1]`), so pairing and truncation only move
integers, and `assemble` builds all examples of a chunk with one numpy gather.
"""

from __future__ import annotations

import collections
import random

import numpy as np

PAIR_TASKS = ("nsp", "sop", "none")


def split_points(word_starts: np.ndarray, limit: int) -> list[int]:
    """Cut offsets (excluding 0 and the end) that split a sentence longer than `limit` tokens at
    word starts into pieces of at most `limit` (a hard cut where a word is longer)."""
    cuts, start = [], 0
    while len(word_starts) - start > limit:
        starts = np.flatnonzero(word_starts[start + 1:start + limit + 1]) + start + 1
        start = int(starts[-1]) if len(starts) else start + limit
        cuts.append(start)
    return cuts


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


def truncate_pair(a: tuple[int, int], b: tuple[int, int], max_tokens: int, rng: random.Random):
    """Ranges `a` and `b` shortened until both fit, each dropped token at the front or the back
    of its segment with probability 1/2."""
    keep_a, keep_b = truncated_lengths(a[1] - a[0], b[1] - b[0], max_tokens)
    out = []
    for (start, end), keep in ((a, keep_a), (b, keep_b)):
        dropped = end - start - keep
        front = rng.getrandbits(dropped).bit_count() if dropped else 0  # Binomial(dropped, 1/2)
        out.append((start + front, start + front + keep))
    return out[0], out[1]


_NONE = (0, 0)


def create_instances(documents: list[list[int]], doc_index: int, max_seq_length: int, short_seq_prob: float,
                     pair_task: str, rng: random.Random, counts: collections.Counter | None = None
                     ) -> list[tuple[int, int, int, int, int]]:
    """Instances of `documents[doc_index]` as (a_start, a_end, b_start, b_end, label) ranges of
    the flat token array; label 0 = B follows A, 1 = random (NSP) / swapped (SOP).
    `counts["forced_random_next"]` counts NSP pairs that had to be random: their A is a single
    sentence (a one-sentence document, or one that fills the whole target length by itself)."""
    bounds = documents[doc_index]
    sentences = len(bounds) - 1
    max_tokens = max_seq_length - (3 if pair_task != "none" else 2)
    target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
    instances = []
    first, i = 0, 0
    while i < sentences:
        if i == sentences - 1 or bounds[i + 1] - bounds[first] >= target:
            single_sentence = i == first
            if pair_task == "none":
                a, b, label = (bounds[first], bounds[i + 1]), _NONE, 0
            else:
                a, b, label, unused = _make_pair(documents, doc_index, first, i + 1, target, pair_task, rng)
                i -= unused
            a, b = truncate_pair(a, b, max_tokens, rng)
            if a[1] > a[0] and (b[1] > b[0] or pair_task == "none"):
                instances.append((a[0], a[1], b[0], b[1], label))
                if counts is not None and pair_task == "nsp" and single_sentence:
                    counts["forced_random_next"] += 1
            first = i + 1
        i += 1
    return instances


def _make_pair(documents, doc_index, first, stop, target, pair_task, rng):
    """Splits sentences [first, stop) into segments A and B; returns (a, b, label, sentences put back)."""
    bounds = documents[doc_index]
    count = stop - first
    if pair_task == "sop" and count == 1:
        start, end = bounds[first], bounds[stop]
        if end - start < 2:
            return (start, end), _NONE, 0, 0
        cut = start + rng.randint(1, end - start - 1)
        a, b = (start, cut), (cut, end)
        return (b, a, 1, 0) if rng.random() < 0.5 else (a, b, 0, 0)
    a_end = first + (1 if count < 2 else rng.randint(1, count - 1))
    a = (bounds[first], bounds[a_end])
    if pair_task == "sop":
        b = (bounds[a_end], bounds[stop])
        return (b, a, 1, 0) if rng.random() < 0.5 else (a, b, 0, 0)
    if (count == 1 or rng.random() < 0.5) and len(documents) > 1:
        other = rng.randrange(len(documents) - 1)
        other += other >= doc_index  # never the same document
        random_bounds = documents[other]
        start = rng.randrange(len(random_bounds) - 1)
        end = start + 1
        while end < len(random_bounds) - 1 and random_bounds[end] - random_bounds[start] < target - (a[1] - a[0]):
            end += 1
        return a, (random_bounds[start], random_bounds[end]), 1, stop - a_end
    return a, (bounds[a_end], bounds[stop]), 0, 0


PAIR_LABEL_NAMES = {"nsp": ("is_next", "random_next"), "sop": ("in_order", "swapped")}
# Shares of label 1 (random next / swapped) that pass without a warning. BERT's NSP recipe itself
# makes 55-62% random-next pairs on real corpora (Korean Wikipedia 55%, NSMC reviews 62%: a single
# sentence as segment A can only be paired at random); a blank line after every line makes 96%.
BALANCED_PAIR_LABELS = (1 / 3, 2 / 3)


def pair_label_counts(counts: collections.Counter, pair_task: str) -> dict:
    """Examples per pair label (from `counts["pair_label_0"]`, `["pair_label_1"]`), the share of
    label 1 (0.5 when the task is learnable) and, for NSP, the forced random-next pairs."""
    if pair_task not in PAIR_LABEL_NAMES:
        return {}
    zero, one = PAIR_LABEL_NAMES[pair_task]
    total = counts["pair_label_0"] + counts["pair_label_1"]
    labels = {zero: counts["pair_label_0"], one: counts["pair_label_1"],
              f"{one}_share": round(counts["pair_label_1"] / max(1, total), 4)}
    return labels | ({"forced_random_next": counts["forced_random_next"]} if pair_task == "nsp" else {})


def pair_label_warning(summary: dict, pair_task: str) -> str | None:
    """One line when the share of label 1 in `summary["pair_labels"]` is outside
    BALANCED_PAIR_LABELS (NSP: mostly single-sentence segments A), naming the cause and the fix."""
    labels = summary["pair_labels"]
    if not labels:
        return None
    one = PAIR_LABEL_NAMES[pair_task][1]
    share = labels[f"{one}_share"]
    if BALANCED_PAIR_LABELS[0] <= share <= BALANCED_PAIR_LABELS[1]:
        return None
    single, documents = summary["one_sentence_documents"], summary["documents"]
    message = (f"{share:.0%} of the {pair_task.upper()} labels are {one} (50% expected); {single} of "
               f"{documents} documents have one sentence")
    if pair_task != "nsp":
        return message
    fix = "put a blank line between documents, not after every sentence, or " if 2 * single > documents else ""
    return (f"{message}; {labels['forced_random_next']} pairs had to be random because segment A was a single "
            f"sentence (short documents or long sentences): {fix}use --pair-task sop / none")


def pack_documents(documents: list[list[int]], max_seq_length: int) -> list[list[tuple[int, int]]]:
    """RoBERTa's FULL-SENTENCES packing for `--pair-task none --pack-sequences`: whole sentences
    taken in order from `documents` (sentence boundaries, as `create_instances` takes them) fill
    each example up to `max_seq_length` tokens, crossing document boundaries. An example is a list
    of (start, end) ranges of the flat token array, each a run of consecutive sentences of one
    document; `assemble_packed` closes every range with [SEP], so a [SEP] marks each document end
    and the example's end. A document that does not fit continues at the start of the next example.
    Nothing is truncated: sentences must be at most `max_seq_length - 2` tokens (prepare-data splits
    longer ones)."""
    budget = max_seq_length - 1  # tokens after [CLS], each range with its [SEP]
    examples, ranges, used = [], [], 0
    for bounds in documents:
        start = bounds[0]
        for sentence_start, sentence_end in zip(bounds[:-1], bounds[1:]):
            if used + (sentence_end - start) + 1 > budget:  # this sentence opens the next example
                if sentence_start > start:
                    ranges.append((start, sentence_start))
                if ranges:
                    examples.append(ranges)
                ranges, used, start = [], 0, sentence_start
        ranges.append((start, bounds[-1]))
        used += bounds[-1] - start + 1
    if ranges:
        examples.append(ranges)
    return examples


def _gather_pieces(source: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """source[starts[0]:starts[0]+lengths[0]] ++ source[starts[1]:...] ++ ..., in one gather."""
    offsets = np.cumsum(lengths) - lengths
    return source[np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))]


def assemble(flat: np.ndarray, instances: np.ndarray, cls_id: int, sep_id: int) -> dict[str, tuple]:
    """`[CLS] A [SEP] (B [SEP])` for every (a_start, a_end, b_start, b_end, label) row, as flat
    columns (values, count per example): input_ids, segment_ids, next_sentence_label."""
    a_start, a_end, b_start, b_end, labels = (instances[:, k] for k in range(5))
    len_a, len_b = a_end - a_start, b_end - b_start
    has_b = (len_b > 0).astype(np.int64)
    cls_at, sep_at = len(flat), len(flat) + 1
    source = np.concatenate([flat, np.array([cls_id, sep_id], flat.dtype)])
    ones = np.ones_like(len_a)
    starts = np.stack([cls_at * ones, a_start, sep_at * ones, b_start, sep_at * ones], axis=1)
    lengths = np.stack([ones, len_a, ones, len_b, has_b], axis=1)
    input_ids = _gather_pieces(source, starts.reshape(-1), lengths.reshape(-1))
    counts = lengths.sum(axis=1)
    position = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    segments = (position >= np.repeat(len_a + 2, counts)).astype(np.int32)
    return {"input_ids": (input_ids.astype(np.int32), counts), "segment_ids": (segments, counts),
            "next_sentence_label": (labels.astype(np.int32), ones)}


def assemble_packed(flat: np.ndarray, examples: list[list[tuple[int, int]]], cls_id: int, sep_id: int
                    ) -> dict[str, tuple]:
    """`[CLS] R1 [SEP] R2 [SEP] ...` for every example of `pack_documents`, as the columns of
    `assemble`: one segment (segment ids 0) and next_sentence_label 0, as for `--pair-task none`."""
    cls_at, sep_at = len(flat), len(flat) + 1
    source = np.concatenate([flat, np.array([cls_id, sep_id], flat.dtype)])
    starts, lengths, counts = [], [], []
    for ranges in examples:
        starts.append(cls_at)
        lengths.append(1)
        for start, end in ranges:
            starts += [start, sep_at]
            lengths += [end - start, 1]
        counts.append(1 + sum(end - start + 1 for start, end in ranges))
    input_ids = _gather_pieces(source, np.array(starts, np.int64), np.array(lengths, np.int64))
    counts = np.array(counts, np.int64)
    zeros = np.zeros(len(examples), np.int32)
    return {"input_ids": (input_ids.astype(np.int32), counts),
            "segment_ids": (np.zeros(len(input_ids), np.int32), counts),
            "next_sentence_label": (zeros, np.ones_like(counts))}
