"""The train state, the task contract, the shared cross-entropy, and the pure train step that
`bert_jax.training.trainer` jit-compiles for every task."""

from __future__ import annotations

from typing import Any, Callable, Protocol

import flax
import jax
import jax.numpy as jnp
import optax

from bert_jax import backend
from bert_jax.data.spec import BatchSpec

STEP_KEYS = ("learning_rate", "grad_norm", "steps")  # accumulated by the step itself, for every task


class Task(Protocol):
    """What the trainer needs from a task (pretraining, classification). Batches are dicts of arrays
    laid out as `batch_spec`; sums are float32 scalars (or arrays) that add over batches and hosts and
    are divided on the host at log steps only."""

    batch_spec: BatchSpec
    sum_keys: tuple[str, ...]  # the weighted sums and denominators `loss` returns

    def init(self, rng) -> Any:
        """Fresh parameters, boxed with logical axis names (flax `nn.with_logical_partitioning`)."""

    def totals(self, batch: dict) -> dict:
        """Denominators over the whole global batch, the same for every micro-batch."""

    def loss(self, params, batch: dict, rng, totals: dict) -> tuple[jax.Array, dict]:
        """(scalar loss to differentiate, sums) on `batch` (a micro-batch) with dropout from `rng`."""

    def eval_sums(self, params, batch: dict) -> dict:
        """Sums over `batch` without dropout; padding rows weigh 0."""

    def train_summary(self, sums: dict) -> dict[str, float]:
        """Host-side means of the accumulated train sums (and STEP_KEYS), named 'train/...'."""

    def eval_summary(self, sums: dict) -> dict[str, float]:
        """Host-side means of the eval sums, named 'eval/...'."""


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: the step, parameters, optimizer state, and the
    metric sums since the last log line (so a resumed run logs exactly what it would have)."""

    step: jax.Array
    params: Any
    opt_state: Any
    metrics: dict[str, jax.Array]


def zero_metrics(keys: tuple[str, ...]) -> dict[str, jax.Array]:
    return {k: jnp.zeros((), jnp.float32) for k in keys}


def init_state(task: Task, tx: optax.GradientTransformation, rng) -> TrainState:
    """A fresh state whose parameters are still boxed with logical axis names."""
    params = task.init(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      metrics=zero_metrics(task.sum_keys + STEP_KEYS))


def cross_entropy_and_hits(logits, labels) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy with integer labels [...] over logits [..., classes], computed in float32,
    and 1.0 where the label's logit is the largest (a tie counts as a hit). Hits carry no gradient.

    On CPU (`backend.hand_written_gradients`) the gradient is written by hand: softmax times the
    incoming gradient in one pass over the logits, then the one-hot part subtracted at the label
    positions only (a scatter of one value per row into that buffer), instead of the one-hot
    matrix that XLA:CPU would build from autodiff. GPU and TPU compilers fuse autodiff's version."""
    logits = logits.astype(jnp.float32)
    if backend.hand_written_gradients(backend.current()):
        return _cross_entropy(logits, labels)
    label_logit = jnp.sum(logits * jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), axis=-1)
    hits = (label_logit >= jnp.max(logits, axis=-1)).astype(jnp.float32)
    return jax.nn.logsumexp(logits, axis=-1) - label_logit, jax.lax.stop_gradient(hits)


def _cross_entropy_forward(logits, labels):
    maximum = jnp.max(logits, axis=-1)
    log_normaliser = maximum + jnp.log(jnp.sum(jnp.exp(logits - maximum[..., None]), axis=-1))
    label_logit = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    hits = (label_logit >= maximum).astype(jnp.float32)
    return (log_normaliser - label_logit, hits), (logits, log_normaliser, labels)


@jax.custom_vjp
def _cross_entropy(logits, labels):
    return _cross_entropy_forward(logits, labels)[0]


def _cross_entropy_backward(residuals, cotangents):
    logits, log_normaliser, labels = residuals
    g = cotangents[0]  # the hits' cotangent is dropped: they carry no gradient
    grad = jnp.exp(logits - log_normaliser[..., None]) * g[..., None]
    rows = grad.reshape(-1, grad.shape[-1])
    rows = rows.at[jnp.arange(rows.shape[0]), labels.reshape(-1)].add(-g.reshape(-1))
    return rows.reshape(grad.shape), None


_cross_entropy.defvjp(_cross_entropy_forward, _cross_entropy_backward)


def make_train_step(task: Task, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    grad_accum_steps: int) -> Callable:
    """`train_step(state, batch, rng) -> (state, metrics)`: the task's loss (normalised by its totals
    over the whole batch), gradients accumulated over `grad_accum_steps` interleaved micro-batches
    (rows i::k), then one optimizer update. Dropout keys: `rng` folded with the step (and the
    micro-batch index when accumulating)."""
    grad_fn = jax.grad(task.loss, has_aux=True)

    def train_step(state: TrainState, batch: dict, rng) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(rng, state.step)
        totals = task.totals(batch)
        if grad_accum_steps == 1:
            grads, sums = grad_fn(state.params, batch, rng, totals)
        else:
            micro_batches = jax.tree.map(
                lambda x: x.reshape((x.shape[0] // grad_accum_steps, grad_accum_steps) + x.shape[1:])
                .swapaxes(0, 1), batch)

            def accumulate(carry, inputs):
                micro, index = inputs
                grads, sums = grad_fn(state.params, micro, jax.random.fold_in(rng, index), totals)
                return jax.tree.map(jnp.add, carry, (grads, sums)), None

            zeros = (jax.tree.map(jnp.zeros_like, state.params), zero_metrics(task.sum_keys))
            (grads, sums), _ = jax.lax.scan(accumulate, zeros,
                                            (micro_batches, jnp.arange(grad_accum_steps)))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = sums | {"learning_rate": schedule(state.step), "grad_norm": optax.global_norm(grads),
                          "steps": jnp.ones((), jnp.float32)}
        metrics = jax.tree.map(lambda x: x.astype(jnp.float32), metrics)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  metrics=jax.tree.map(jnp.add, state.metrics, metrics))
        return new_state, metrics

    return train_step


@jax.jit
def all_finite(tree) -> jax.Array:
    """True when every array in `tree` is finite. One compiled program: run op by op, each leaf's
    reduction over a sharded array was its own program with an all-reduce, and dozens of those
    in flight at once deadlocked XLA:CPU's in-process collectives on 8 loaded CPU devices
    ("all reduce ... Expected 8 threads", abort after 40 s)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))

