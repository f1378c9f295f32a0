"""Pretraining: BertForPreTraining with the MLM loss over the masked slots plus NSP/SOP, on the
shards of `prepare-data` (`DataSpec`), run by the one trainer (`bert_jax.training.trainer`).

`train_and_evaluate` is `bert-jax pretrain`; `evaluate_workdir` is `bert-jax evaluate`, which
loads the parameters alone (no optimizer, no train step) and runs the task's eval step.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from bert_jax import backend, fs, metrics_log
from bert_jax.config.validation import validate_pretraining
from bert_jax.data import input_pipeline, masking, tokenizer as tokenizer_lib
from bert_jax.data.spec import DataSpec
from bert_jax.inference import hf, pretrained
from bert_jax.models import flops, hf_weights
from bert_jax.models.bert import BertConfig, BertForPreTraining
from bert_jax.staging import exclusive_lock
from bert_jax.training import evaluation, run_checks, sharding, trainer
from bert_jax.training.checkpoint import Checkpointer
from bert_jax.training.optim import make_optimizer
from bert_jax.training.train_step import cross_entropy_and_hits

SUM_KEYS = ("mlm_loss_sum", "mlm_correct", "mlm_weight", "nsp_loss_sum", "nsp_correct", "nsp_weight")
# config.data fields that only repeat the data: 0 = take the DataSpec's value; another value must equal it.
FOLLOWS_DATA = ("max_seq_length", "max_predictions_per_seq")


def metric_sums(mlm_logits, nsp_logits, batch, use_pair_task: bool) -> dict[str, jax.Array]:
    """Weighted sums and denominators: MLM over real predictions (weights, never `label > 0`),
    NSP/SOP over real examples (weight 0 for every example when the data has no pair task)."""
    weights = batch["masked_lm_weights"].astype(jnp.float32)
    nll, correct = cross_entropy_and_hits(mlm_logits, batch["masked_lm_ids"])
    example_weights = batch["example_weights"].astype(jnp.float32) * (1.0 if use_pair_task else 0.0)
    nsp_nll, nsp_correct = cross_entropy_and_hits(nsp_logits, batch["next_sentence_labels"])
    return {
        "mlm_loss_sum": jnp.sum(nll * weights), "mlm_correct": jnp.sum(correct * weights),
        "mlm_weight": jnp.sum(weights), "nsp_loss_sum": jnp.sum(nsp_nll * example_weights),
        "nsp_correct": jnp.sum(nsp_correct * example_weights), "nsp_weight": jnp.sum(example_weights),
    }


class PretrainingTask:
    """MLM + NSP/SOP on batches of `spec.batch_spec()` (see `bert_jax.training.train_step.Task`)."""

    sum_keys = SUM_KEYS

    def __init__(self, model: BertConfig, spec: DataSpec):
        self.model, self.spec = model, spec
        self.batch_spec = spec.batch_spec()
        self.use_pair_task = spec.pair_task != "none"
        self.module = BertForPreTraining(model)

    def init(self, rng):
        batch = self.batch_spec.zeros(1)
        return self.module.init({"params": rng}, batch["input_ids"],
                                masked_lm_positions=batch["masked_lm_positions"])["params"]

    def _forward(self, params, batch, rng):
        deterministic = rng is None
        rngs = None if deterministic else {"dropout": backend.dropout_key(rng, backend.current())}
        return self.module.apply({"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                                 batch["masked_lm_positions"], deterministic=deterministic, rngs=rngs)

    def totals(self, batch):
        return {"mlm": jnp.maximum(jnp.sum(batch["masked_lm_weights"]), 1.0),
                "nsp": jnp.maximum(jnp.sum(batch["example_weights"]), 1.0)}

    def loss(self, params, batch, rng, totals):
        """Mean MLM cross-entropy over the real predictions of the whole batch plus the NSP/SOP mean."""
        sums = metric_sums(*self._forward(params, batch, rng), batch, self.use_pair_task)
        return sums["mlm_loss_sum"] / totals["mlm"] + sums["nsp_loss_sum"] / totals["nsp"], sums

    def eval_sums(self, params, batch):
        return metric_sums(*self._forward(params, batch, None), batch, self.use_pair_task)

    def train_summary(self, sums):
        return metrics_log.normalize(sums, "train")

    def eval_summary(self, sums):
        return metrics_log.normalize(sums, "eval")


def resolve_model_config(config: ml_collections.ConfigDict, spec: DataSpec) -> BertConfig:
    """The model config with the vocabulary of the data (`model.vocab_size` 0 = follow the data);
    config fields that repeat the data must be 0 or equal it (ValueError naming both)."""
    fields = dict(config.model)
    if fields["vocab_size"] == 0:
        fields["vocab_size"] = spec.vocab_size
    model = BertConfig.from_dict(fields)
    if model.vocab_size != spec.vocab_size:
        raise ValueError(f"config.model.vocab_size={model.vocab_size} but the data's vocabulary has "
                         f"{spec.vocab_size} tokens (metadata.json); use 0 to follow the data")
    for field in FOLLOWS_DATA:
        if config.data[field] not in (0, getattr(spec, field)):
            raise ValueError(f"config.data.{field}={config.data[field]} but the data was prepared with "
                             f"{field}={getattr(spec, field)} (metadata.json); use 0 to follow the data")
    check_mask_prob(config.data.mask_prob, spec, "config.data.mask_prob")
    model.check_sequence_length(spec.max_seq_length)
    return model


def check_mask_prob(mask_prob: float, spec: DataSpec, name: str) -> None:
    """ValueError naming `name` when the data cannot be masked at `mask_prob`: static data holds
    masks made at its own rate; dynamic data needs `masking.max_predictions` slots per example."""
    if spec.masking == "static":
        if mask_prob != spec.mask_prob:
            raise ValueError(f"{name}={mask_prob} but the data holds masks made at mask_prob={spec.mask_prob} "
                             f"(static masking, metadata.json); use {spec.mask_prob} or prepare it with "
                             f"--masking dynamic")
        return
    needed = masking.max_predictions(spec.max_seq_length, mask_prob)
    if needed > spec.max_predictions_per_seq:
        raise ValueError(f"{name}={mask_prob} masks up to {needed} tokens of a {spec.max_seq_length}-token example "
                         f"but the data holds {spec.max_predictions_per_seq} masked slots (metadata.json); prepare "
                         f"it with --mask-prob {mask_prob}")


def setup(config: ml_collections.ConfigDict, spec: DataSpec, mesh=None) -> trainer.Run:
    """The pretraining task on the mesh of `config.mesh` (or `mesh`), its optimizer and jitted steps."""
    model = resolve_model_config(config, spec)
    mesh = mesh or sharding.make_mesh(dict(config.mesh))
    tx, schedule = make_optimizer(config.optim, config.train.num_steps)
    return trainer.setup(PretrainingTask(model, spec), mesh, sharding.axis_rules(config.mesh), tx, schedule,
                         config.train.global_batch_size, config.train.grad_accum_steps, config.data.eval_batch_size)


def evaluate(task: PretrainingTask, eval_step, params, mesh, config, data_dir: str) -> dict[str, float]:
    """MLM loss / accuracy, perplexity and NSP metrics over `config.train.eval_steps` eval batches
    (0 = the whole eval split); the same number of batches on every host."""
    per_host = (config.data.eval_batch_size or config.train.global_batch_size) // jax.process_count()
    count = input_pipeline.eval_batch_count(task.spec, per_host, jax.process_count(), config.train.eval_steps)
    batches = input_pipeline.eval_batches(data_dir, task.spec, per_host, count, seed=config.train.seed,
                                          mask_prob=config.data.mask_prob, process_index=jax.process_index(),
                                          process_count=jax.process_count())
    return evaluation.evaluate(task, eval_step, params, batches, mesh, sharding.axis_rules(config.mesh), count)


ARCHITECTURE = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                "max_position_embeddings", "type_vocab_size", "layer_norm_eps")


def _adopt_architecture(config, imported: BertConfig) -> None:
    """An imported model fixes the architecture; dtype, dropout, scan and remat stay configurable."""
    for field in ARCHITECTURE:
        config.model[field] = getattr(imported, field)
    if jax.process_index() == 0:
        print(f"continuing from the imported model: {imported.num_layers} layers, hidden {imported.hidden_size}, "
              f"vocabulary {imported.vocab_size}", flush=True)


def _resolved_config(config, data_dir: str, model: BertConfig, spec: DataSpec) -> dict:
    """The config as WORKDIR/config.json holds it (JSON types: tuples such as the axis rules become
    lists, so that a resumed run compares like with like): the model section and the fields that
    follow the data resolved against it (config.json states the values the run used)."""
    values = config.to_dict()
    values["data"] |= {field: getattr(spec, field) for field in FOLLOWS_DATA}
    return json.loads(json.dumps(values | {"model": dataclasses.asdict(model), "data_dir": data_dir}))


def _prepare_workdir(workdir: str, resolved: dict, data_dir: str) -> None:
    """Writes config.json, the tokenizer and data_metadata.json; called after the run-start checks."""
    trainer.write_config(workdir, resolved)
    if jax.process_index() != 0:
        return
    tokenizer_dst = os.path.join(workdir, "tokenizer")
    if not fs.exists(tokenizer_dst):
        tokenizer_lib.copy_files(os.path.join(data_dir, "tokenizer"), tokenizer_dst)
    fs.copy(os.path.join(data_dir, "metadata.json"), os.path.join(workdir, "data_metadata.json"))


def train_and_evaluate(config: ml_collections.ConfigDict, data_dir: str, workdir: str,
                       allow_changes: tuple[str, ...] = ()) -> dict:
    """Pretrains BertForPreTraining on `data_dir`, resuming from `workdir` if it has checkpoints.

    Before anything is written into `workdir`: the config's values are checked, the workdir is
    locked against a second writer, the data checked against itself and the workdir's tokenizer,
    and a resumed run's config compared with the saved one (`allow_changes`: schedule fields such
    as 'train.num_steps' that may change deliberately; see run_checks.compare_with_saved).
    The run starts from, in this order: the workdir's latest checkpoint, the weights `import-hf`
    left in it, random initialisation. Returns the last train and eval metrics. On SIGTERM it saves
    a checkpoint and returns early. Local paths are made absolute; `workdir` must be local or on a
    file system orbax can write.
    """
    validate_pretraining(config)
    allow_changes = run_checks.allowed_changes(allow_changes)
    data_dir, workdir = fs.absolute(data_dir), fs.absolute(workdir)
    fs.checkpoint_directory(workdir)
    with exclusive_lock(workdir, "--workdir", enabled=jax.process_index() == 0):
        return _train_and_evaluate(config, data_dir, workdir, allow_changes)


def _train_and_evaluate(config: ml_collections.ConfigDict, data_dir: str, workdir: str,
                        allow_changes: tuple[str, ...]) -> dict:
    spec = DataSpec.read(data_dir)
    run_checks.check_prepared_data(data_dir, spec)
    imported = hf.load_imported(workdir)
    if imported is not None:
        _adopt_architecture(config, imported[0])
    run_checks.check_tokenizer_matches(workdir, data_dir, spec)
    run = setup(config, spec)
    model, train = run.task.model, config.train
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), train.max_to_keep, create=False)
    resolved = _resolved_config(config, data_dir, model, spec)
    step, saved = checkpointer.latest_step(), run_checks.read_saved_config(workdir)
    if step is not None and saved is not None:
        notes = run_checks.compare_with_saved(saved, resolved, step, allow_changes)
        if notes and jax.process_index() == 0:
            print(f"resuming at step {step} with changed settings: {'; '.join(notes)}", flush=True)
    init_from = None if imported is None else (lambda _: hf_weights.params_from_hf(imported[1], model))
    start = trainer.restore_or_init(run, checkpointer, train.seed, init_from, workdir)
    _prepare_workdir(workdir, resolved, data_dir)
    first = int(start.state.step)
    batches = input_pipeline.train_batches(
        data_dir, spec, train.global_batch_size // jax.process_count(), train.num_steps - first, seed=train.seed,
        mask_prob=config.data.mask_prob, shuffle_buffer=config.data.shuffle_buffer, start_batch=first,
        process_index=jax.process_index(), process_count=jax.process_count())
    batch = train.global_batch_size
    throughput = trainer.Throughput(
        batch, batch * spec.max_seq_length,
        batch * flops.train_flops_per_sequence(model, spec.max_seq_length, spec.max_predictions_per_seq),
        flops.peak_tflops(jax.devices()[0].device_kind, train.peak_tflops_per_device))
    hooks = trainer.Hooks(evaluate=(lambda params, _: evaluate(run.task, run.eval_step, params, run.mesh, config,
                                                                data_dir)) if spec.has_eval else None)
    cadence = trainer.Cadence(train.num_steps, train.log_every, train.eval_every, train.checkpoint_every)
    result = trainer.fit(
        run, start, batches, cadence, checkpointer, workdir, hooks, throughput=throughput,
        describe=f"pretraining {model.num_layers}-layer BERT (hidden {model.hidden_size})",
        nonfinite_hint="lower config.optim.learning_rate or raise warmup_steps")
    return result.metrics


def _eval_mesh(config) -> jax.sharding.Mesh:
    """The training mesh when this machine has its devices, else data parallel over all devices."""
    try:
        return sharding.make_mesh(dict(config.mesh))
    except ValueError:
        return sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})


def evaluate_workdir(workdir: str, data_dir: str, eval_steps: int = 0,
                     mask_prob: float | None = None) -> dict[str, float]:
    """`bert-jax evaluate`: the latest checkpoint of `workdir` on the eval split of `data_dir`
    (`eval_steps` batches, 0 = all), masked at the run's `data.mask_prob` or at `mask_prob` (to
    compare runs trained at different rates on the same masks). Loads the parameters only (no
    optimizer state, optimizer or train step) onto the training mesh if this machine has it, else
    onto all its devices."""
    from bert_jax.config.loading import config_from_workdir

    if mask_prob is not None and not 0.0 < mask_prob < 1.0:
        raise ValueError(f"--mask-prob must be in (0, 1), got {mask_prob}")
    workdir, data_dir = fs.absolute(workdir), fs.absolute(data_dir)
    config = config_from_workdir(workdir)
    config.train.eval_steps = eval_steps
    spec = DataSpec.read(data_dir)
    if not spec.has_eval:
        raise ValueError(f"--data {data_dir}: the eval split is empty (prepare it with --eval-fraction > 0)")
    run_checks.check_prepared_data(data_dir, spec)
    run_checks.check_tokenizer_matches(workdir, data_dir, spec)
    task = PretrainingTask(resolve_model_config(config, spec), spec)  # checks the run's own rate
    if mask_prob is not None:
        check_mask_prob(mask_prob, spec, "--mask-prob")
        config.data.mask_prob = mask_prob
    mesh = _eval_mesh(config)
    sharding.check_batch(config.data.eval_batch_size or config.train.global_batch_size, mesh)
    shardings = sharding.logical_shardings(evaluation.abstract_params(task), mesh, sharding.axis_rules(config.mesh))
    loaded = pretrained.load_workdir(workdir)
    params = jax.device_put(loaded.params, shardings)
    eval_step = evaluation.compile_eval_step(task, mesh, shardings)
    return {"step": loaded.step} | evaluate(task, eval_step, params, mesh, config, data_dir)
