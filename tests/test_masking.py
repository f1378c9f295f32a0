"""Whole-word masking statistics: budget, 80/10/10 per word, specials untouched, padding slots."""

import numpy as np
import pytest

from bert_jax.data.masking import MaskingConfig, default_slots, mask_batch, max_predictions

VOCAB = 1000
CONFIG = MaskingConfig(mask_prob=0.15, max_predictions_per_seq=20, vocab_size=VOCAB, mask_id=4,
                       special_ids=(0, 1, 2, 3, 4))


def _batch(batch=400, length=64, seed=0):
    """[CLS] words [SEP] words [SEP] [PAD]..., words of 1-3 pieces (word starts flagged)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), np.int32)
    starts = np.zeros((batch, length), bool)
    for row in range(batch):
        n = rng.integers(20, length)
        ids[row, :n] = rng.integers(5, VOCAB, n)
        ids[row, 0], ids[row, n // 2], ids[row, n - 1] = 2, 3, 3
        pos = 1
        while pos < n:
            starts[row, pos] = True
            pos += rng.integers(1, 4)
    return ids, starts


def test_budget_and_labels():
    ids, starts = _batch()
    out = mask_batch(ids, ids != 0, starts, np.random.default_rng(1), CONFIG)
    real = (ids >= 5).sum(1)
    expected = np.minimum(20, np.maximum(1, np.floor(real * 0.15 + 0.5)))
    predicted = out["masked_lm_weights"].sum(1)
    assert np.all(predicted <= expected)
    assert np.mean(predicted / expected) > 0.93  # whole words rarely leave the budget unfilled
    for key in ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
        assert out[key].shape == (400, 20)
    rows = np.arange(400)[:, None]
    weights = out["masked_lm_weights"] > 0
    labels = ids[rows, out["masked_lm_positions"]]
    assert np.array_equal(out["masked_lm_ids"][weights], labels[weights])
    assert np.all(out["masked_lm_ids"][~weights] == 0) and np.all(out["masked_lm_positions"][~weights] == 0)


def test_specials_never_masked_and_unmasked_tokens_unchanged():
    ids, starts = _batch()
    out = mask_batch(ids, ids != 0, starts, np.random.default_rng(2), CONFIG)
    rows = np.arange(len(ids))[:, None]
    selected = np.zeros_like(ids, bool)
    selected[np.broadcast_to(rows, out["masked_lm_positions"].shape)[out["masked_lm_weights"] > 0],
             out["masked_lm_positions"][out["masked_lm_weights"] > 0]] = True
    assert not np.any(selected & (ids < 5))
    assert np.array_equal(out["input_ids"][~selected], ids[~selected])


def test_80_10_10_and_random_tokens_are_not_special():
    ids, starts = _batch(batch=2000, seed=3)
    out = mask_batch(ids, ids != 0, starts, np.random.default_rng(4), CONFIG)
    w = out["masked_lm_weights"] > 0
    shown = out["input_ids"][np.arange(len(ids))[:, None], out["masked_lm_positions"]][w]
    original = out["masked_lm_ids"][w]
    as_mask = np.mean(shown == 4)
    unchanged = np.mean(shown == original)
    assert abs(as_mask - 0.8) < 0.02
    assert abs(unchanged - (0.1 + 0.1 / VOCAB)) < 0.02
    replaced = shown[(shown != 4) & (shown != original)]
    assert abs(len(replaced) / len(shown) - 0.1) < 0.02
    assert replaced.min() >= 5 and replaced.max() < VOCAB


def test_whole_words_masked_together_with_one_decision():
    ids, starts = _batch(seed=5)
    out = mask_batch(ids, ids != 0, starts, np.random.default_rng(6), CONFIG)
    for row in range(len(ids)):
        positions = set(out["masked_lm_positions"][row][out["masked_lm_weights"][row] > 0].tolist())
        word = np.cumsum(starts[row] | (ids[row] < 5))
        for pos in positions:
            members = [p for p in np.flatnonzero(word == word[pos]) if ids[row, p] >= 5]
            assert set(members) <= positions  # the whole word is predicted
            shown = {("mask" if out["input_ids"][row, p] == 4 else
                      "same" if out["input_ids"][row, p] == ids[row, p] else "random") for p in members}
            assert len(shown) == 1 or shown == {"same", "random"}  # random may redraw the same id


def test_deterministic_for_a_seed_and_edge_cases():
    ids, starts = _batch(batch=10)
    a = mask_batch(ids, ids != 0, starts, np.random.default_rng(7), CONFIG)
    b = mask_batch(ids, ids != 0, starts, np.random.default_rng(7), CONFIG)
    c = mask_batch(ids, ids != 0, starts, np.random.default_rng(8), CONFIG)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["input_ids"], c["input_ids"])
    only_specials = np.array([[2, 3, 0, 0]], np.int32)
    out = mask_batch(only_specials, only_specials != 0, np.ones_like(only_specials, bool), np.random.default_rng(0),
                     CONFIG)
    assert out["masked_lm_weights"].sum() == 0 and np.array_equal(out["input_ids"], only_specials)
    tiny = np.array([[2, 9, 3]], np.int32)
    out = mask_batch(tiny, np.ones_like(tiny, bool), np.ones_like(tiny, bool), np.random.default_rng(0), CONFIG)
    assert out["masked_lm_weights"].sum() == 1 and out["masked_lm_positions"][0, 0] == 1  # at least one


def test_config_validation():
    with pytest.raises(ValueError, match="mask_prob"):
        MaskingConfig(0.0, 20, 100, 4, (0, 1, 2, 3, 4))
    with pytest.raises(ValueError, match="max_predictions_per_seq"):
        MaskingConfig(0.15, 0, 100, 4, (0, 1, 2, 3, 4))


@pytest.mark.parametrize("length, mask_prob, slots", [(128, 0.15, 20), (512, 0.15, 77), (64, 0.15, 10),
                                                      (128, 0.4, 52), (64, 0.4, 26), (100, 0.2, 20)])
def test_the_default_slots_hold_the_most_a_full_example_predicts(length, mask_prob, slots):
    assert default_slots(length, mask_prob) == slots  # 20 at 128 x 0.15 as google-research/bert
    # a full single-segment example ([CLS] tokens [SEP]) with every token its own word fills the budget
    ids = np.random.default_rng(0).integers(5, VOCAB, (8, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 2, 3
    config = MaskingConfig(mask_prob, length, VOCAB, 4, (0, 1, 2, 3, 4))
    predicted = mask_batch(ids, np.ones_like(ids), np.ones_like(ids, bool), np.random.default_rng(1),
                           config)["masked_lm_weights"].sum(1)
    assert np.all(predicted == max_predictions(length, mask_prob)) and max_predictions(length, mask_prob) <= slots
