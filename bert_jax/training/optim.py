"""The optimizer: AdamW or LAMB, warmup + cosine or linear decay, clipping; decay skips
LayerNorm parameters and biases."""

from __future__ import annotations

import jax
import optax

DECAYED = ("kernel", "embedding")  # parameter leaf names that get weight decay


def learning_rate_schedule(optim, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then cosine or linear decay to end_lr_factor."""
    peak, warmup = optim.learning_rate, optim.warmup_steps
    end = peak * optim.end_lr_factor
    if warmup >= num_steps:
        raise ValueError(f"config.optim.warmup_steps={warmup} must be below train.num_steps={num_steps}")
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, num_steps, end)
    if optim.schedule == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, end, num_steps - warmup)],
            [warmup])
    raise ValueError(f"config.optim.schedule must be 'cosine' or 'linear', got {optim.schedule!r}")


def decay_mask(params):
    """True for kernels and embeddings, False for LayerNorm scales and all biases."""

    def decays(path, _):
        names = [getattr(key, "key", None) for key in path]
        name = next((n for n in reversed(names) if isinstance(n, str)), "")
        return name in DECAYED

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation described by `config.optim` and its learning-rate schedule."""
    schedule = learning_rate_schedule(optim, num_steps)
    if optim.name == "adamw":
        core = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                           weight_decay=optim.weight_decay, mask=decay_mask)
    elif optim.name == "lamb":
        core = optax.lamb(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                          weight_decay=optim.weight_decay, mask=decay_mask)
    else:
        raise ValueError(f"config.optim.name must be 'adamw' or 'lamb', got {optim.name!r}")
    if optim.grad_clip_norm > 0:
        core = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), core)
    return core, schedule
