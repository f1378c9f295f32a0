"""Evaluation on a device mesh for any task: parameter shardings, the jitted eval step, and the
loop that sums it over batches. No optimizer, train state or train step: `bert-jax evaluate`
runs this on parameters loaded alone (`bert_jax.inference.pretrained`)."""

from __future__ import annotations

from typing import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import backend, progress
from bert_jax.training import sharding


def abstract_params(task):
    """The task's parameters as ShapeDtypeStructs, still boxed with logical axis names."""
    return jax.eval_shape(task.init, jax.random.PRNGKey(0))


def compile_eval_step(task, mesh: jax.sharding.Mesh, param_shardings):
    """`eval_step(params, global batch) -> sums`, jitted: parameters on `param_shardings`, the batch
    split over the mesh's data axes, the sums replicated."""
    return jax.jit(task.eval_sums, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh), compiler_options=backend.compiler_options(mesh))


def evaluate(task, eval_step, params, batches: Iterable[dict], mesh: jax.sharding.Mesh, rules, count: int) -> dict:
    """`task.eval_summary` of the eval sums over `count` per-host batches (numpy dicts laid out as
    `task.batch_spec`) under the logical axis `rules`, with a progress bar on process 0. One batch
    stays in flight."""
    totals = None
    bar = progress.progress_bar(count, "batch", jax.process_index() == 0, desc="eval", leave=False)
    with bar, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        for batch in batches:
            sums = eval_step(params, sharding.global_batch(batch, mesh))
            previous, totals = totals, sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            jax.block_until_ready(previous)  # the batch before this one has finished (one stays in flight)
            bar.update()
        totals = jax.device_get(totals)
    return task.eval_summary(totals)
