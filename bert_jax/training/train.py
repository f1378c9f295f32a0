"""`pretrain` and `evaluate`: validation, sharded setup, the training loop, checkpoints, logs."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from bert_jax import fs, progress
from bert_jax.config.validation import validate_pretraining
from bert_jax.data import input_pipeline, tokenizer as tokenizer_lib
from bert_jax.data.pretraining_data import load_metadata
from bert_jax.inference import hf, pretrained
from bert_jax.models import flops, hf_weights
from bert_jax.models.bert import BertConfig, BertForPreTraining
from bert_jax.staging import exclusive_lock
from bert_jax import metrics_log
from bert_jax import backend
from bert_jax.training import run_checks, sharding
from bert_jax.training.checkpoint import Checkpointer
from bert_jax.training.optim import make_optimizer
from bert_jax.training.preemption import Preemption
from bert_jax.training.train_step import SUM_KEYS, all_finite, init_state, make_eval_step, make_train_step, zero_metrics


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss or the parameters stop being finite."""


def resolve_model_config(config: ml_collections.ConfigDict, metadata: dict) -> BertConfig:
    """Checks the data's metadata.json against the config; returns the model config."""
    fields = dict(config.model)
    if fields["vocab_size"] == 0:
        fields["vocab_size"] = metadata["vocab_size"]
    model = BertConfig.from_dict(fields)
    if model.vocab_size != metadata["vocab_size"]:
        raise ValueError(f"config.model.vocab_size={model.vocab_size} but the data's vocabulary has "
                         f"{metadata['vocab_size']} tokens (metadata.json); use 0 to follow the data")
    for field, key in (("max_seq_length", "max_seq_length"), ("max_predictions_per_seq", "max_predictions_per_seq")):
        if config.data[field] != metadata[key]:
            raise ValueError(f"config.data.{field}={config.data[field]} but the data was prepared with "
                             f"{key}={metadata[key]} (metadata.json)")
    model.check_sequence_length(metadata["max_seq_length"])
    return model


def check_batch(config: ml_collections.ConfigDict, mesh) -> None:
    """The global batch must split evenly over data-parallel devices, hosts and micro-batches."""
    batch, accum = config.train.global_batch_size, config.train.grad_accum_steps
    parts = sharding.data_parallel_size(mesh) * accum
    if batch % parts:
        raise ValueError(f"config.train.global_batch_size={batch} is not divisible by the data-parallel "
                         f"size x grad_accum_steps = {parts}")
    if batch % jax.process_count():
        raise ValueError(f"config.train.global_batch_size={batch} is not divisible by the "
                         f"{jax.process_count()} processes")
    eval_batch = config.data.eval_batch_size
    if eval_batch and (eval_batch % sharding.data_parallel_size(mesh) or eval_batch % jax.process_count()):
        raise ValueError(f"config.data.eval_batch_size={eval_batch} is not divisible by the data-parallel "
                         f"size {sharding.data_parallel_size(mesh)} and the {jax.process_count()} processes")


@dataclasses.dataclass
class Run:
    """A compiled setup: model config, mesh, shardings and step functions."""

    model: BertConfig
    mesh: jax.sharding.Mesh
    state_shardings: object
    abstract_state: object  # ShapeDtypeStructs with shardings, for restoring checkpoints
    train_step: object
    eval_step: object
    init: object
    metadata: dict


def setup(config: ml_collections.ConfigDict, metadata: dict, mesh=None) -> Run:
    """Builds the mesh, the optimizer, sharded initialisation and the jitted steps."""
    model = resolve_model_config(config, metadata)
    mesh = mesh or sharding.make_mesh(dict(config.mesh))
    check_batch(config, mesh)
    tx, schedule = make_optimizer(config.optim, config.train.num_steps)
    bert = BertForPreTraining(model)
    seq, slots = metadata["max_seq_length"], metadata["max_predictions_per_seq"]

    def init(rng):
        return init_state(bert, tx, rng, seq, slots)

    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    state_shardings = sharding.logical_shardings(abstract, mesh, sharding.axis_rules(config.mesh))
    data = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    use_nsp = metadata["pair_task"] != "none"
    options = backend.compiler_options(mesh)
    train_step = jax.jit(
        make_train_step(model, tx, schedule, config.train.grad_accum_steps, use_nsp),
        in_shardings=(state_shardings, data, replicated), out_shardings=(state_shardings, replicated),
        donate_argnums=0, compiler_options=options)
    eval_step = jax.jit(make_eval_step(model, use_nsp), in_shardings=(state_shardings.params, data),
                        out_shardings=replicated, compiler_options=options)
    init_jit = jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=state_shardings)
    abstract_state = sharding.placed_abstract(abstract, state_shardings)
    return Run(model, mesh, state_shardings, abstract_state, train_step, eval_step, init_jit, metadata)


def evaluate(run: Run, params, config, data_dir: str) -> dict[str, float]:
    """MLM loss / accuracy, perplexity and NSP metrics over `config.train.eval_steps` eval batches
    (0 = the whole eval split); the same number of batches on every host."""
    per_host = (config.data.eval_batch_size or config.train.global_batch_size) // jax.process_count()
    count = input_pipeline.eval_batch_count(run.metadata, per_host, jax.process_count(), config.train.eval_steps)
    totals = zero_metrics(SUM_KEYS)
    bar = progress.progress_bar(count, "batch", jax.process_index() == 0, desc="eval", leave=False)
    with bar, jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.axis_rules(config.mesh)):
        for batch in input_pipeline.eval_batches(data_dir, run.metadata, per_host, count,
                                                 seed=config.train.seed, mask_prob=config.data.mask_prob,
                                                 process_index=jax.process_index(),
                                                 process_count=jax.process_count()):
            previous = totals
            totals = jax.tree.map(jnp.add, totals, run.eval_step(params, sharding.global_batch(batch, run.mesh)))
            jax.block_until_ready(previous)  # the batch before this one has finished (one stays in flight)
            bar.update()
        totals = jax.device_get(totals)
    return metrics_log.normalize(totals, "eval")


ARCHITECTURE = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                "max_position_embeddings", "type_vocab_size", "layer_norm_eps")


def _adopt_architecture(config, imported: BertConfig) -> None:
    """An imported model fixes the architecture; dtype, dropout, scan and remat stay configurable."""
    for field in ARCHITECTURE:
        config.model[field] = getattr(imported, field)
    if jax.process_index() == 0:
        print(f"continuing from the imported model: {imported.num_layers} layers, hidden {imported.hidden_size}, "
              f"vocabulary {imported.vocab_size}", flush=True)


def _resolved_config(config, data_dir: str, model: BertConfig) -> dict:
    """The config as written to WORKDIR/config.json: the model section resolved against the data."""
    return config.to_dict() | {"model": dataclasses.asdict(model), "data_dir": data_dir}


def _prepare_workdir(workdir: str, config, data_dir: str, model: BertConfig) -> None:
    """Writes config.json, the tokenizer and data_metadata.json; called after the run-start checks."""
    if jax.process_index() != 0:
        return
    tf.io.gfile.makedirs(workdir)
    with tf.io.gfile.GFile(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(_resolved_config(config, data_dir, model), f, indent=2)
    tokenizer_dst = os.path.join(workdir, "tokenizer")
    if not tf.io.gfile.exists(tokenizer_dst):
        tokenizer_lib.copy_files(os.path.join(data_dir, "tokenizer"), tokenizer_dst)
    tf.io.gfile.copy(os.path.join(data_dir, "metadata.json"), os.path.join(workdir, "data_metadata.json"),
                     overwrite=True)


def _check_finite(host_metrics: dict, step: int, checkpointer: Checkpointer) -> None:
    if not all(np.isfinite(v) for v in host_metrics.values()):
        raise NonFiniteLossError(
            f"non-finite loss at step {step} ({ {k: float(v) for k, v in host_metrics.items()} }); "
            f"stopping. The last good checkpoint is step {checkpointer.latest_step()}; lower "
            f"config.optim.learning_rate or raise warmup_steps")


def train_and_evaluate(config: ml_collections.ConfigDict, data_dir: str, workdir: str,
                       allow_changes: tuple[str, ...] = ()) -> dict:
    """Pretrains BertForPreTraining on `data_dir`, resuming from `workdir` if it has checkpoints.

    Before anything is written into `workdir`: the config's values are checked, the workdir is
    locked against a second writer, the data checked against itself and the workdir's tokenizer,
    and a resumed run's config compared with the saved one (`allow_changes`: schedule fields such
    as 'train.num_steps' that may change deliberately; see run_checks.compare_with_saved).
    Returns the last train and eval metrics. On SIGTERM it saves a checkpoint and returns early.
    Local paths are made absolute; `workdir` must be local or on a file system orbax can write.
    """
    validate_pretraining(config)
    allow_changes = run_checks.allowed_changes(allow_changes)
    data_dir, workdir = fs.absolute(data_dir), fs.absolute(workdir)
    fs.checkpoint_directory(workdir)
    with exclusive_lock(workdir, "--workdir", enabled=jax.process_index() == 0):
        return _train_and_evaluate(config, data_dir, workdir, allow_changes)


def _restore_checked(checkpointer: Checkpointer, run: Run, config, data_dir: str, workdir: str,
                     allow_changes: tuple[str, ...]):
    """The latest checkpoint of `workdir` after comparing the saved config with this run's (one-line
    errors naming the fields); an orbax restore error becomes one line naming the checkpoint."""
    step = checkpointer.latest_step()
    if step is None:
        return None
    saved = run_checks.read_saved_config(workdir)
    if saved is not None:
        notes = run_checks.compare_with_saved(saved, _resolved_config(config, data_dir, run.model), step,
                                              allow_changes)
        if notes and jax.process_index() == 0:
            print(f"resuming at step {step} with changed settings: {'; '.join(notes)}", flush=True)
    try:
        return checkpointer.restore(run.abstract_state)
    except ValueError as error:
        raise ValueError(f"--workdir {workdir}: checkpoint {step} does not fit the config "
                         f"({str(error).strip().splitlines()[0][:200]}); use a new --workdir") from None


def _train_and_evaluate(config: ml_collections.ConfigDict, data_dir: str, workdir: str,
                        allow_changes: tuple[str, ...]) -> dict:
    metadata = load_metadata(data_dir)
    run_checks.check_prepared_data(data_dir, metadata)
    imported = hf.load_imported(workdir)
    if imported is not None:
        _adopt_architecture(config, imported[0])
    run_checks.check_tokenizer_matches(workdir, data_dir, metadata)
    run = setup(config, metadata)
    train = config.train
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), train.max_to_keep, create=False)
    rng = jax.random.PRNGKey(train.seed)
    restored = _restore_checked(checkpointer, run, config, data_dir, workdir, allow_changes)
    _prepare_workdir(workdir, config, data_dir, run.model)
    if restored is not None:
        state, rng, _ = restored
    else:
        state = run.init(jax.random.fold_in(rng, 1))
        if imported is not None:
            params = hf_weights.params_from_hf(imported[1], run.model)
            state = state.replace(params=jax.device_put(params, run.state_shardings.params))
    start = int(state.step)
    is_main = jax.process_index() == 0
    bar = progress.progress_bar(train.num_steps, "step", is_main, initial=start)
    logger = metrics_log.MetricsLogger(workdir, enabled=is_main, print_fn=bar.write, start_step=start)
    per_host = train.global_batch_size // jax.process_count()
    batches = input_pipeline.train_batches(
        data_dir, metadata, per_host, train.num_steps - start, seed=train.seed, mask_prob=config.data.mask_prob,
        shuffle_buffer=config.data.shuffle_buffer, start_batch=start, process_index=jax.process_index(),
        process_count=jax.process_count())
    seq = metadata["max_seq_length"]
    step_flops = train.global_batch_size * flops.train_flops_per_sequence(
        run.model, seq, metadata["max_predictions_per_seq"])
    peak = flops.peak_tflops(jax.devices()[0].device_kind, train.peak_tflops_per_device)
    preemption = Preemption()
    last = {}
    window_start, window_steps = time.time(), 0
    if is_main:
        bar.write(f"pretraining {run.model.num_layers}-layer BERT (hidden {run.model.hidden_size}) from step "
                  f"{start} to {train.num_steps} on mesh {dict(run.mesh.shape)}; workdir {workdir}")
    try:
        with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.axis_rules(config.mesh)):
            for step in range(start + 1, train.num_steps + 1):
                state, _ = run.train_step(state, sharding.global_batch(next(batches), run.mesh), rng)
                checkpointer.check()
                window_steps += 1
                preempted = preemption.check(step)
                final = step == train.num_steps
                if step % train.log_every == 0 or final:
                    host = jax.device_get(state.metrics)
                    _check_finite(host, step, checkpointer)
                    elapsed = time.time() - window_start
                    last = metrics_log.normalize(host, "train") | _throughput(
                        window_steps, elapsed, train.global_batch_size * seq, train.global_batch_size,
                        step_flops, peak, jax.device_count())
                    state = state.replace(metrics=jax.tree.map(jnp.zeros_like, state.metrics))
                    bar.update(window_steps)  # device_get waited for these steps: the bar counts finished ones
                    logger.write(step, last)
                    window_start, window_steps = time.time(), 0
                if (train.eval_every and step % train.eval_every == 0 or final) and _has_eval(metadata):
                    eval_metrics = evaluate(run, state.params, config, data_dir)
                    last |= eval_metrics
                    logger.write(step, eval_metrics)
                    window_start = time.time()
                if step % train.checkpoint_every == 0 or final or preempted:
                    if not bool(jax.device_get(all_finite(state.params))):
                        raise NonFiniteLossError(
                            f"non-finite parameters at step {step}; stopping. The last good checkpoint "
                            f"is step {checkpointer.latest_step()}")
                    checkpointer.save(step, state, rng)
                    window_start = time.time()  # throughput counts training steps only
                if preempted:
                    if is_main:
                        print(f"SIGTERM: saved a checkpoint at step {step}; exiting", flush=True)
                    break
    finally:
        bar.close()
        preemption.restore()
        checkpointer.close()
    if is_main and not preemption.requested:
        print(f"wrote {metrics_log.plot_curves(workdir)}", flush=True)
    return last


def _has_eval(metadata: dict) -> bool:
    return metadata["splits"]["eval"]["examples"] > 0


def _throughput(steps, seconds, tokens_per_step, examples_per_step, step_flops, peak, devices) -> dict:
    seconds = max(seconds, 1e-9)
    out = {"perf/examples_per_s": steps * examples_per_step / seconds,
           "perf/tokens_per_s": steps * tokens_per_step / seconds}
    if peak:
        out["perf/mfu"] = steps * step_flops / seconds / (peak * 1e12 * devices)
    return out


def restore_workdir(workdir: str, metadata: dict, config=None):
    """(run, state) of the latest checkpoint in a pretraining `workdir`, set up for `metadata`."""
    from bert_jax.config.loading import config_from_workdir

    workdir = fs.absolute(workdir)
    config = config or config_from_workdir(workdir)
    pretrained.check_workdir_tokenizer(workdir)
    run = setup(config, metadata)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.train.max_to_keep)
    restored = checkpointer.restore(run.abstract_state)
    checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"--workdir {workdir}: no checkpoint yet")
    return run, restored[0]


def evaluate_workdir(workdir: str, data_dir: str, eval_steps: int = 0) -> dict[str, float]:
    """`bert-jax evaluate`: the latest checkpoint of `workdir` on the eval split of `data_dir`."""
    from bert_jax.config.loading import config_from_workdir

    workdir, data_dir = fs.absolute(workdir), fs.absolute(data_dir)
    config = config_from_workdir(workdir)
    config.train.eval_steps = eval_steps
    metadata = load_metadata(data_dir)
    if not _has_eval(metadata):
        raise ValueError(f"--data {data_dir}: the eval split is empty (prepare it with --eval-fraction > 0)")
    run_checks.check_prepared_data(data_dir, metadata)
    run_checks.check_tokenizer_matches(workdir, data_dir, metadata)
    run, state = restore_workdir(workdir, metadata, config)
    return {"step": int(state.step)} | evaluate(run, state.params, config, data_dir)
