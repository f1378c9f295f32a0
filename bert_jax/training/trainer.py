"""The one training loop, for every task (`bert_jax.tasks`): the mesh, sharded initialisation, the
jitted train step with donated state and gradient accumulation, orbax checkpoints with a start in
the order resume > init-from > scratch, SIGTERM, the stop on non-finite values, logs, the
progress bar and the eval cadence. What differs between pretraining and fine-tuning (model,
loss and metric sums, batches, eval, what is saved besides checkpoints) comes from the task and
from the callables `fit` takes."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax import backend, fs, metrics_log, progress
from bert_jax.training import evaluation, sharding
from bert_jax.training.checkpoint import Checkpointer
from bert_jax.training.preemption import Preemption
from bert_jax.training.train_step import Task, all_finite, init_state, make_train_step


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss or the parameters stop being finite."""


@dataclasses.dataclass
class Run:
    """A compiled setup: the task, mesh, shardings and step functions."""

    task: Task
    mesh: jax.sharding.Mesh
    rules: tuple  # flax logical axis rules (`sharding.axis_rules(config.mesh)`)
    state_shardings: object
    abstract_state: object  # ShapeDtypeStructs with shardings, for restoring checkpoints
    init: Callable  # rng -> TrainState placed on state_shardings
    train_step: Callable  # (state, global batch, rng) -> (state, metrics); the state is donated
    eval_step: Callable  # (params, global batch) -> sums


def setup(task: Task, mesh: jax.sharding.Mesh, rules, tx: optax.GradientTransformation, schedule: optax.Schedule,
          global_batch_size: int, grad_accum_steps: int = 1, eval_batch_size: int = 0, batch_flag: str = "") -> Run:
    """Checks the batch against the mesh, then builds sharded initialisation (jax.eval_shape ->
    logical partition specs -> mesh shardings by the logical axis `rules`) and the jitted train and
    eval steps."""
    sharding.check_batch(global_batch_size, mesh, grad_accum_steps, eval_batch_size, batch_flag)
    init = functools.partial(init_state, task, tx)
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    state_shardings = sharding.logical_shardings(abstract, mesh, rules)
    train_step = jax.jit(make_train_step(task, tx, schedule, grad_accum_steps),
                         in_shardings=(state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
                         out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0,
                         compiler_options=backend.compiler_options(mesh))
    return Run(task, mesh, rules, state_shardings, sharding.placed_abstract(abstract, state_shardings),
               init=jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=state_shardings),
               train_step=train_step,
               eval_step=evaluation.compile_eval_step(task, mesh, state_shardings.params))


@dataclasses.dataclass
class Start:
    """Where a run starts: its state, base rng, the checkpoint's extra data, and the source
    ('resume', 'init-from' or 'scratch')."""

    state: object
    rng: jax.Array
    extra: dict
    source: str


def restore_or_init(run: Run, checkpointer: Checkpointer, seed: int, init_from: Callable | None = None,
                    workdir: str = "") -> Start:
    """The start of a run, by priority: resume from the latest checkpoint in `checkpointer` >
    `init_from(fresh params) -> params` (e.g. a pretrained encoder, imported weights) > scratch.
    A checkpoint that does not fit the run's state is a one-line ValueError naming it."""
    step = checkpointer.latest_step()
    if step is not None:
        try:
            state, rng, extra = checkpointer.restore(run.abstract_state, step)
        except ValueError as error:
            raise ValueError(f"--workdir {workdir}: checkpoint {step} does not fit the config "
                             f"({str(error).strip().splitlines()[0][:200]}); use a new --workdir") from None
        return Start(state, rng, extra, "resume")
    rng = jax.random.PRNGKey(seed)
    state = run.init(jax.random.fold_in(rng, 1))
    if init_from is None:
        return Start(state, rng, {}, "scratch")
    params = jax.device_put(init_from(state.params), run.state_shardings.params)
    return Start(state.replace(params=params), rng, {}, "init-from")


def write_config(workdir: str, values: dict) -> None:
    """Writes WORKDIR/config.json (process 0 only)."""
    if jax.process_index() != 0:
        return
    fs.makedirs(workdir)
    with fs.open_text(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(values, f, indent=2)


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When the loop logs, evaluates and checkpoints (in steps). Evaluation also runs at the last
    step; `eval_every` 0 = only there."""

    num_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    log_at_eval: bool = False  # also log train metrics at every evaluation (fine-tuning: each epoch)
    checkpoint_at_eval: bool = False  # also checkpoint at every evaluation


@dataclasses.dataclass(frozen=True)
class Throughput:
    """What the perf/ metrics need: examples and tokens per step, model FLOPs per step, the device's
    peak TFLOP/s (0 = unknown: no MFU)."""

    examples_per_step: int
    tokens_per_step: int
    step_flops: float
    peak_tflops: float

    def metrics(self, steps: int, seconds: float) -> dict[str, float]:
        seconds = max(seconds, 1e-9)
        out = {"perf/examples_per_s": steps * self.examples_per_step / seconds,
               "perf/tokens_per_s": steps * self.tokens_per_step / seconds}
        if self.peak_tflops:
            out["perf/mfu"] = steps * self.step_flops / seconds / (self.peak_tflops * 1e12 * jax.device_count())
        return out


@dataclasses.dataclass
class Hooks:
    """What a task's driver adds to the loop. `evaluate(params, step) -> metrics` (None: no eval data);
    `on_eval(step, params, metrics)` after each evaluation (e.g. save the best model); `stop()`
    checked before each step (e.g. early stopping); `extra()` JSON saved with each checkpoint."""

    evaluate: Callable[[object, int], dict] | None = None
    on_eval: Callable[[int, object, dict], None] = lambda step, params, metrics: None
    stop: Callable[[], bool] = lambda: False
    extra: Callable[[], dict] = dict


@dataclasses.dataclass
class Result:
    """The last train (and eval) metrics, and whether SIGTERM ended the run early."""

    metrics: dict
    preempted: bool


def fit(run: Run, start: Start, batches: Iterator[dict], cadence: Cadence, checkpointer: Checkpointer,
        workdir: str, hooks: Hooks, *, describe: str, nonfinite_hint: str, curves=metrics_log.CURVES,
        throughput: Throughput | None = None, desc: str | None = None) -> Result:
    """Runs steps `start.state.step + 1` .. `cadence.num_steps` on per-host `batches` (numpy dicts laid
    out as the task's batch spec; the first is for the step after the start). Logs to the console,
    TensorBoard and metrics.jsonl (`describe`: the run's first console line), raises
    NonFiniteLossError (`nonfinite_hint` says what to change) when a logged sum or the parameters
    at a checkpoint are not finite, and on SIGTERM saves a checkpoint and returns early. Writes
    curves.png at the end. Closes `checkpointer`."""
    state, rng = start.state, start.rng
    first = int(state.step)
    is_main = jax.process_index() == 0
    bar = progress.progress_bar(cadence.num_steps, "step", is_main, initial=first, desc=desc)
    logger = metrics_log.MetricsLogger(workdir, enabled=is_main, print_fn=bar.write, start_step=first)
    preemption = Preemption()
    last, preempted = {}, False
    window_start, window_steps = time.time(), 0
    if is_main:
        bar.write(f"{describe} from step {first} to {cadence.num_steps} on mesh {dict(run.mesh.shape)}; "
                  f"workdir {workdir}")
    try:
        with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
            for step in range(first + 1, cadence.num_steps + 1):
                if hooks.stop():
                    break
                batch = next(batches)
                if step == first + 1:  # one look at the layout: a mismatch is named here, not by XLA
                    run.task.batch_spec.check(batch, "the first training batch")
                state, _ = run.train_step(state, sharding.global_batch(batch, run.mesh), rng)
                checkpointer.check()
                window_steps += 1
                preempted = preemption.check(step)
                final = step == cadence.num_steps
                eval_due = bool(cadence.eval_every and step % cadence.eval_every == 0) or final
                if step % cadence.log_every == 0 or final or (cadence.log_at_eval and eval_due):
                    sums = jax.device_get(state.metrics)
                    if not all(np.all(np.isfinite(v)) for v in sums.values()):
                        raise NonFiniteLossError(
                            f"non-finite loss at step {step} ({ {k: float(v) for k, v in sums.items()} }); "
                            f"stopping. The last good checkpoint is step {checkpointer.latest_step()}; "
                            f"{nonfinite_hint}")
                    last = run.task.train_summary(sums)
                    if throughput is not None:
                        last |= throughput.metrics(window_steps, time.time() - window_start)
                    state = state.replace(metrics=jax.tree.map(jnp.zeros_like, state.metrics))
                    bar.update(window_steps)  # device_get waited for these steps: the bar counts finished ones
                    logger.write(step, last)
                    window_start, window_steps = time.time(), 0
                if eval_due and hooks.evaluate is not None:
                    scores = hooks.evaluate(state.params, step)
                    last |= scores
                    logger.write(step, scores)
                    hooks.on_eval(step, state.params, scores)
                    window_start = time.time()
                if (step % cadence.checkpoint_every == 0 or final or preempted
                        or (cadence.checkpoint_at_eval and eval_due)):
                    if not bool(jax.device_get(all_finite(state.params))):
                        raise NonFiniteLossError(
                            f"non-finite parameters at step {step}; stopping. The last good checkpoint "
                            f"is step {checkpointer.latest_step()}")
                    checkpointer.save(step, state, rng, hooks.extra())
                    window_start = time.time()  # throughput counts training steps only
                if preempted:
                    if is_main:
                        bar.write(f"SIGTERM: saved a checkpoint at step {step}; run the same command to continue")
                    break
    finally:
        bar.close()
        preemption.restore()
        checkpointer.close()
    if is_main and not preempted:
        print(f"wrote {metrics_log.plot_curves(workdir, curves)}", flush=True)
    return Result(last, preempted)
