"""The train state, losses, and the pure train / eval steps (jit-compiled by `bert_jax.training.train`)."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from bert_jax import backend
from bert_jax.models.bert import BertConfig, BertForPreTraining

SUM_KEYS = ("mlm_loss_sum", "mlm_correct", "mlm_weight", "nsp_loss_sum", "nsp_correct", "nsp_weight")
TRAIN_KEYS = SUM_KEYS + ("learning_rate", "grad_norm", "steps")


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: the step, parameters, optimizer state, and the
    metric sums since the last log line (so a resumed run logs exactly what it would have)."""

    step: jax.Array
    params: Any
    opt_state: Any
    metrics: dict[str, jax.Array]


def zero_metrics(keys=TRAIN_KEYS) -> dict[str, jax.Array]:
    return {k: jnp.zeros((), jnp.float32) for k in keys}


def init_state(model: BertForPreTraining, tx: optax.GradientTransformation, rng, seq_len: int,
               predictions: int) -> TrainState:
    """A fresh state whose parameters are still boxed with logical axis names."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    params = model.init({"params": rng}, ids, masked_lm_positions=jnp.zeros((1, predictions), jnp.int32))
    params = params["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      metrics=zero_metrics())


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


def metric_sums(mlm_logits, nsp_logits, batch, use_nsp: bool) -> dict[str, jax.Array]:
    """Weighted sums and denominators: MLM over real predictions (weights, never `label > 0`),
    NSP over real examples."""
    weights = batch["masked_lm_weights"].astype(jnp.float32)
    nll, correct = cross_entropy_and_hits(mlm_logits, batch["masked_lm_ids"])
    example_weights = batch["example_weights"].astype(jnp.float32) * (1.0 if use_nsp else 0.0)
    nsp_nll, nsp_correct = cross_entropy_and_hits(nsp_logits, batch["next_sentence_labels"])
    return {
        "mlm_loss_sum": jnp.sum(nll * weights), "mlm_correct": jnp.sum(correct * weights),
        "mlm_weight": jnp.sum(weights), "nsp_loss_sum": jnp.sum(nsp_nll * example_weights),
        "nsp_correct": jnp.sum(nsp_correct * example_weights), "nsp_weight": jnp.sum(example_weights),
    }


def _forward(model, params, batch, rng, deterministic: bool):
    rngs = None if deterministic else {"dropout": backend.dropout_key(rng, backend.current())}
    return model.apply({"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                       batch["masked_lm_positions"], deterministic=deterministic, rngs=rngs)


def make_train_step(config: BertConfig, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    grad_accum_steps: int, use_nsp: bool) -> Callable:
    """`train_step(state, batch, rng) -> (state, metrics)`: mean MLM cross-entropy over real
    predictions plus NSP cross-entropy, gradients accumulated over `grad_accum_steps`
    interleaved micro-batches (rows i::k), then one optimizer update."""
    model = BertForPreTraining(config)

    def loss_fn(params, micro, rng, mlm_total, nsp_total):
        mlm_logits, nsp_logits = _forward(model, params, micro, rng, deterministic=False)
        sums = metric_sums(mlm_logits, nsp_logits, micro, use_nsp)
        loss = sums["mlm_loss_sum"] / mlm_total + sums["nsp_loss_sum"] / nsp_total
        return loss, sums

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict, rng) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(rng, state.step)
        mlm_total = jnp.maximum(jnp.sum(batch["masked_lm_weights"]), 1.0)
        nsp_total = jnp.maximum(jnp.sum(batch["example_weights"]), 1.0)
        if grad_accum_steps == 1:
            grads, sums = grad_fn(state.params, batch, rng, mlm_total, nsp_total)
        else:
            micro_batches = jax.tree.map(
                lambda x: x.reshape((x.shape[0] // grad_accum_steps, grad_accum_steps) + x.shape[1:])
                .swapaxes(0, 1), batch)

            def accumulate(carry, inputs):
                micro, index = inputs
                grads, sums = grad_fn(state.params, micro, jax.random.fold_in(rng, index), mlm_total,
                                      nsp_total)
                return jax.tree.map(jnp.add, carry, (grads, sums)), None

            zeros = (jax.tree.map(jnp.zeros_like, state.params), zero_metrics(SUM_KEYS))
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


def make_eval_step(config: BertConfig, use_nsp: bool) -> Callable:
    """`eval_step(params, batch) -> sums` without dropout."""
    model = BertForPreTraining(config)

    def eval_step(params, batch):
        mlm_logits, nsp_logits = _forward(model, params, batch, None, deterministic=True)
        return metric_sums(mlm_logits, nsp_logits, batch, use_nsp)

    return eval_step


@jax.jit
def all_finite(tree) -> jax.Array:
    """True when every array in `tree` is finite. One compiled program: run op by op, each leaf's
    reduction over a sharded array was its own program with an all-reduce, and dozens of those
    in flight at once deadlocked XLA:CPU's in-process collectives on 8 loaded CPU devices
    ("all reduce ... Expected 8 threads", abort after 40 s)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))

