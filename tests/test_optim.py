"""Optimizer: decay mask, schedules, LAMB and AdamW from the config, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.config.defaults import bert_config
from bert_jax.training.optim import decay_mask, learning_rate_schedule, make_optimizer


def _optim(**overrides):
    optim = bert_config(num_layers=1, hidden_size=64).optim
    optim.update(overrides)
    return optim


def test_weight_decay_skips_layer_norm_and_biases():
    params = {"dense": {"kernel": 1.0, "bias": 1.0}, "LayerNorm": {"scale": 1.0, "bias": 1.0},
              "word_embeddings": {"embedding": 1.0}, "mlm_bias": 1.0}
    assert decay_mask(params) == {"dense": {"kernel": True, "bias": False},
                                  "LayerNorm": {"scale": False, "bias": False},
                                  "word_embeddings": {"embedding": True}, "mlm_bias": False}


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedules_warm_up_then_decay(schedule):
    fn = learning_rate_schedule(_optim(learning_rate=1e-3, warmup_steps=10, schedule=schedule, end_lr_factor=0.1), 100)
    values = np.array([fn(s) for s in range(101)])
    assert values[0] == 0 and values[10] == pytest.approx(1e-3)
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) <= 1e-12)
    assert values[100] == pytest.approx(1e-4)
    assert values[55] == pytest.approx(5.5e-4, rel=1e-3)  # half way down, for both shapes


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_optimizers_step_and_decay_only_kernels(name):
    tx, _ = make_optimizer(_optim(name=name, learning_rate=0.1, warmup_steps=1, weight_decay=0.5,
                                  grad_clip_norm=1.0), 10)
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(zero_grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    assert float(params["dense"]["kernel"][0, 0]) < 1.0  # decayed with zero gradients
    assert float(params["dense"]["bias"][0]) == 1.0  # biases are never decayed


def test_bad_optimizer_settings():
    with pytest.raises(ValueError, match="config.optim.name must be 'adamw' or 'lamb'"):
        make_optimizer(_optim(name="sgd", warmup_steps=10), 100)
    with pytest.raises(ValueError, match="config.optim.schedule must be 'cosine' or 'linear'"):
        make_optimizer(_optim(schedule="step", warmup_steps=10), 100)
    with pytest.raises(ValueError, match="warmup_steps=10000 must be below train.num_steps=100"):
        make_optimizer(_optim(), 100)
