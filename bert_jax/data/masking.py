"""Whole-word masked-LM masking (BERT's 80/10/10), vectorised over a batch, pure numpy.

Shared by `prepare-data` (static masking) and the tf.data input pipeline (dynamic masking).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """What to mask: share of real tokens, slots per sequence and the vocabulary layout."""

    mask_prob: float
    max_predictions_per_seq: int
    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]  # never masked, never drawn as random replacements
    mask_token_rate: float = 0.8  # masked words shown as [MASK]
    random_token_rate: float = 0.1  # masked words shown as random tokens; the rest stay unchanged

    def __post_init__(self):
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.max_predictions_per_seq <= 0:
            raise ValueError(f"max_predictions_per_seq must be positive, got {self.max_predictions_per_seq}")
        if self.mask_id not in self.special_ids:
            raise ValueError(f"mask_id {self.mask_id} must be one of the special ids {self.special_ids}")


def prediction_budget(real_tokens, mask_prob: float) -> np.ndarray:
    """Tokens to predict in sequences of `real_tokens` (int or int array) real non-special tokens,
    before the cap at the masked slots: `max(1, round(n * mask_prob))`, halves rounded up
    (google-research/bert). int32, the shape of `real_tokens`."""
    return np.maximum(1, np.floor(np.asarray(real_tokens) * mask_prob + 0.5)).astype(np.int32)


def max_predictions(length: int, mask_prob: float) -> int:
    """The most tokens `mask_batch` predicts in one example of `length` positions: the budget of a
    sequence whose n = length - 2 real tokens leave out only [CLS] and one [SEP]. Data whose masked
    slots hold fewer would cap the masking rate."""
    return int(prediction_budget(length - 2, mask_prob))


def default_slots(length: int, mask_prob: float) -> int:
    """`prepare-data`'s default masked slots per example, `ceil(length * mask_prob)`: 20 at BERT's
    128 x 0.15 (google-research/bert's `max_predictions_per_seq`); never below `max_predictions`."""
    return int(np.ceil(length * mask_prob - 1e-9))  # 1e-9: 100 * 0.2 is 20.000000000000004


@functools.lru_cache(maxsize=8)
def _ordinary_ids(vocab_size: int, special_ids: tuple[int, ...]) -> np.ndarray:
    """The vocabulary without its special ids: where random replacements come from."""
    return np.setdiff1d(np.arange(vocab_size, dtype=np.int32), np.asarray(special_ids, np.int32))


def mask_batch(input_ids: np.ndarray, input_mask: np.ndarray, word_starts: np.ndarray,
               rng: np.random.Generator, config: MaskingConfig) -> dict[str, np.ndarray]:
    """Masks whole words in `input_ids` [B, S] int; `input_mask` [B, S] (1 = real token, 0 = padding)
    decides what is real, never an assumed padding id, and padding keeps its ids.

    Per sequence, `min(max_predictions_per_seq, max(1, round(n * mask_prob)))` tokens are predicted, where
    n counts real non-special tokens; words are drawn in random order and taken whole while they
    fit the budget (as google-research/bert). Each chosen word is then, as a whole, replaced by
    [MASK] (80%), by random non-special tokens (10%) or left unchanged (10%).
    Returns `input_ids` (masked), `masked_lm_positions`, `masked_lm_ids` and `masked_lm_weights`
    (1.0 for real predictions, 0.0 for padding slots), each [B, max_predictions_per_seq].
    """
    ids = np.asarray(input_ids, dtype=np.int32)
    batch, length = ids.shape
    rows = np.arange(batch)[:, None]
    candidate = np.asarray(input_mask, bool) & ~np.isin(ids, config.special_ids)
    previous_candidate = np.concatenate([np.zeros((batch, 1), bool), candidate[:, :-1]], axis=1)
    starts = candidate & (np.asarray(word_starts, bool) | ~previous_candidate)
    word_of = np.cumsum(starts, axis=1) - 1  # word index of each position (valid on candidates)
    num_words = starts.sum(axis=1)
    word_lengths = np.zeros((batch, length + 1), np.int32)
    np.add.at(word_lengths, (np.broadcast_to(rows, ids.shape)[candidate], word_of[candidate]), 1)

    num_candidates = candidate.sum(axis=1)
    budget = np.minimum(config.max_predictions_per_seq, prediction_budget(num_candidates, config.mask_prob))
    budget = np.where(num_candidates > 0, budget, 0)

    order = np.argsort(np.where(np.arange(length)[None, :] < num_words[:, None],
                                rng.random((batch, length)), np.inf), axis=1)
    chosen = np.zeros((batch, length + 1), bool)
    used = np.zeros(batch, np.int32)
    for k in range(int(num_words.max(initial=0))):
        word = order[:, k]
        size = word_lengths[rows[:, 0], word]
        take = (k < num_words) & (used + size <= budget)
        chosen[rows[:, 0], word] |= take
        used += np.where(take, size, 0)
        if np.all(used >= budget):
            break

    selected = candidate & np.take_along_axis(chosen, np.where(candidate, word_of, length), axis=1)
    action = np.take_along_axis(rng.random((batch, length + 1)), np.where(candidate, word_of, length), axis=1)
    to_mask = selected & (action < config.mask_token_rate)
    to_random = selected & (action >= config.mask_token_rate) & (
        action < config.mask_token_rate + config.random_token_rate)
    ordinary = _ordinary_ids(config.vocab_size, config.special_ids)
    random_ids = ordinary[rng.integers(0, len(ordinary), ids.shape)]
    masked = np.where(to_mask, config.mask_id, np.where(to_random, random_ids, ids))

    slots = min(config.max_predictions_per_seq, length)
    positions = np.argsort(~selected, axis=1, kind="stable")[:, :slots]
    weights = np.take_along_axis(selected, positions, axis=1)
    pad = config.max_predictions_per_seq - slots
    positions = np.pad(np.where(weights, positions, 0), ((0, 0), (0, pad)))
    labels = np.where(np.pad(weights, ((0, 0), (0, pad))),
                      np.take_along_axis(ids, positions, axis=1), 0)
    weights = np.pad(weights, ((0, 0), (0, pad)))
    return {
        "input_ids": masked.astype(np.int32),
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": labels.astype(np.int32),
        "masked_lm_weights": weights.astype(np.float32),
    }
