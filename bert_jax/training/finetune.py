"""Fine-tuning `BertModel` + a classification head on labelled text (single texts or pairs).

The run uses pretraining's machinery: the same device mesh and logical sharding rules, a jitted
train step with donated state, orbax checkpoints (resumed exactly, also after SIGTERM), and
TensorBoard / metrics.jsonl / curves.png logs. Each epoch ends with accuracy and macro-F1 on the
eval set; the best epoch is saved as `model.safetensors` + `finetune.json` + `tokenizer/`, which
`bert-jax predict` and `Classifier` load.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf

from bert_jax import fs, progress
from bert_jax.config.defaults import finetune_config
from bert_jax.config.validation import validate_finetuning
from bert_jax.data import finetune_data, tokenizer as tokenizer_lib
from bert_jax.data.finetune_data import Examples, batch_indices, encode, host_batch
from bert_jax.inference import pretrained
from bert_jax.models.bert import BertConfig, BertModel, Dense
from bert_jax import metrics_log
from bert_jax import backend
from bert_jax.training import sharding
from bert_jax.training.checkpoint import Checkpointer
from bert_jax.training.optim import make_optimizer
from bert_jax.training.preemption import Preemption
from bert_jax.training.train_step import TrainState, cross_entropy_and_hits, zero_metrics

SAVED = "finetune.json"
TRAIN_KEYS = ("loss_sum", "correct", "count", "learning_rate", "grad_norm", "steps")
CURVES = (("loss", "cross-entropy"), ("accuracy", "accuracy"), ("macro_f1", "macro-F1"))


class BertClassifier(nn.Module):
    """BertModel, dropout, and a dense layer on the pooled [CLS] output."""

    config: BertConfig
    num_labels: int

    @nn.compact
    def __call__(self, input_ids, input_mask, segment_ids, deterministic: bool = True):
        _, pooled = BertModel(self.config, name="bert")(input_ids, input_mask, segment_ids, deterministic)
        pooled = nn.Dropout(self.config.hidden_dropout)(pooled, deterministic=deterministic)
        logits = Dense(self.config, (self.num_labels,), ("embed", None), name="classifier")(pooled)
        return logits.astype(jnp.float32)


@dataclasses.dataclass
class FinetuneRun:
    """The mesh, shardings and compiled steps of one fine-tuning run."""

    mesh: jax.sharding.Mesh
    state_shardings: object
    abstract_state: object
    init: object
    train_step: object
    eval_step: object
    gather: object  # params -> the same params replicated on every device (fully addressable)


def _optimizer(train: ml_collections.ConfigDict, num_steps: int):
    """Pretraining's AdamW (decay mask, clipping) with warmup over `warmup_fraction` of the steps
    and linear decay to 0."""
    warmup = min(max(1, int(num_steps * train.warmup_fraction)), num_steps - 1)
    optim = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=train.learning_rate, warmup_steps=warmup, schedule="linear", end_lr_factor=0.0,
        weight_decay=train.weight_decay, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=train.grad_clip_norm))
    return make_optimizer(optim, num_steps)


def setup(model_config: BertConfig, num_labels: int, config: ml_collections.ConfigDict, num_steps: int) -> FinetuneRun:
    """Mesh, optimizer, sharded initialisation and the jitted train / eval steps."""
    mesh = sharding.make_mesh(dict(config.mesh))
    batch = config.train.global_batch_size
    if batch % sharding.data_parallel_size(mesh) or batch % jax.process_count():
        raise ValueError(f"config.train.global_batch_size={batch} (--batch-size) is not divisible by the "
                         f"data-parallel size {sharding.data_parallel_size(mesh)} and the "
                         f"{jax.process_count()} processes")
    model = BertClassifier(model_config, num_labels)
    tx, schedule = _optimizer(config.train, num_steps)
    length = config.train.max_length

    def init(rng):
        ids = jnp.zeros((1, length), jnp.int32)
        params = model.init(rng, ids, ids, ids)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          metrics=zero_metrics(TRAIN_KEYS))

    def apply(params, batch, rng=None):
        rngs = None if rng is None else {"dropout": rng}
        return model.apply({"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                           deterministic=rng is None, rngs=rngs)

    def train_step(state: TrainState, batch: dict, rng) -> TrainState:
        rng = jax.random.fold_in(rng, state.step)
        weights = batch["weights"]

        def loss_fn(params):
            nll, hits = cross_entropy_and_hits(apply(params, batch, rng), batch["labels"])
            nll_sum = jnp.sum(nll * weights)
            return nll_sum / jnp.maximum(weights.sum(), 1.0), (nll_sum, jnp.sum(hits * weights))

        (_, (nll_sum, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {"loss_sum": nll_sum, "correct": correct, "count": weights.sum(),
                   "learning_rate": schedule(state.step), "grad_norm": optax.global_norm(grads),
                   "steps": jnp.ones(())}
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state,
                             metrics=jax.tree.map(lambda a, b: a + b.astype(jnp.float32), state.metrics, metrics))

    def eval_step(params, batch) -> dict:
        logits = apply(params, batch)
        weights = batch["weights"]
        truth = jax.nn.one_hot(batch["labels"], num_labels) * weights[:, None]
        confusion = truth.T @ jax.nn.one_hot(jnp.argmax(logits, -1), num_labels)
        nll, _ = cross_entropy_and_hits(logits, batch["labels"])
        return {"confusion": confusion, "loss_sum": jnp.sum(nll * weights)}

    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = sharding.logical_shardings(abstract, mesh, sharding.axis_rules(config.mesh))
    data, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    options = backend.compiler_options(mesh)
    return FinetuneRun(
        mesh, shardings, sharding.placed_abstract(abstract, shardings),
        init=jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings),
        train_step=jax.jit(train_step, in_shardings=(shardings, data, replicated), out_shardings=shardings,
                           donate_argnums=0, compiler_options=options),
        eval_step=jax.jit(eval_step, in_shardings=(shardings.params, data), out_shardings=replicated,
                          compiler_options=options),
        gather=jax.jit(lambda params: params, out_shardings=replicated))


def _global_batch(examples: Examples, indices: np.ndarray, mesh) -> dict:
    return sharding.global_batch(host_batch(examples, indices, jax.process_index(), jax.process_count()), mesh)


def evaluate(run: FinetuneRun, params, examples: Examples, global_batch: int) -> dict[str, float]:
    """Loss, accuracy and macro-F1 over every example of `examples` (no dropout)."""
    confusion, loss_sum = 0.0, 0.0
    for indices in batch_indices(len(examples.labels), global_batch, seed=None):
        sums = jax.device_get(run.eval_step(params, _global_batch(examples, indices, run.mesh)))
        confusion, loss_sum = confusion + sums["confusion"], loss_sum + float(sums["loss_sum"])
    accuracy, macro_f1 = finetune_data.scores(confusion)
    return {"eval/loss": loss_sum / len(examples.labels), "eval/accuracy": accuracy, "eval/macro_f1": macro_f1}


def _train_metrics(sums: dict) -> dict[str, float]:
    sums = {k: float(v) for k, v in sums.items()}
    count, steps = max(sums["count"], 1e-9), max(sums["steps"], 1e-9)
    return {"train/loss": sums["loss_sum"] / count, "train/accuracy": sums["correct"] / count,
            "train/learning_rate": sums["learning_rate"] / steps, "train/grad_norm": sums["grad_norm"] / steps}


def _best(history: list[dict]) -> dict | None:
    return max(history, key=lambda h: h["eval_accuracy"]) if history else None  # first of equals


def _patience_spent(history: list[dict], patience: int) -> bool:
    return bool(history) and history[-1]["epoch"] - _best(history)["epoch"] >= patience


def finetune(init_dir: str, train_file, eval_file, workdir: str, text_column: str = "text",
             label_column: str = "label", pair_column: str | None = None,
             config: ml_collections.ConfigDict | None = None, labels: list | None = None,
             skip_bad_rows: bool = False) -> dict:
    """Fine-tunes the encoder of `init_dir` (a pretraining workdir or a Hugging Face directory),
    resuming from `workdir`'s checkpoints if any, and saves the best epoch by eval accuracy.

    `train_file` and `eval_file` are each a .tsv/.csv/.jsonl path or Python data (a pandas
    DataFrame, a `datasets.Dataset`, a dict of column lists such as {"text": [...], "label":
    [...]}, or a list of row dicts; see `finetune_data.load_table`). Labels keep their type: int
    labels come back as ints in `labels` and from `Classifier.predict`.
    `labels` declares the label set (else: the training data's labels, sorted); `skip_bad_rows`
    skips and counts malformed rows instead of stopping at the first (see `finetune_data.read_table`).
    The settings, both tables and the labels are checked before the model is loaded.
    Returns the best epoch's metrics, the per-epoch history, the label names, truncation and
    skipped-row counts."""
    train_file, eval_file = (fs.absolute(os.fspath(d)) if isinstance(d, (str, os.PathLike)) else d
                             for d in (train_file, eval_file))
    init_dir, workdir = map(fs.absolute, (init_dir, workdir))
    fs.checkpoint_directory(workdir)
    config = config or finetune_config()
    train_cfg = config.train
    validate_finetuning(config)  # every numeric field and its type, named with its flag where it has one
    columns = [text_column] + ([pair_column] if pair_column else [])
    tables = {split: finetune_data.load_table(source, columns, label_column, skip_bad_rows, split)
              for split, source in (("train", train_file), ("eval", eval_file))}
    train_file, eval_file = tables["train"].path, tables["eval"].path  # file paths, or names of the data
    labels = finetune_data.label_names(tables["train"], label_column, labels)
    finetune_data.check_labels(tables["eval"], label_column, labels)
    base = pretrained.load(init_dir)
    model_config = dataclasses.replace(base.config, **dict(config.model))
    if train_cfg.max_length > model_config.max_position_embeddings:
        raise ValueError(f"config.train.max_length={train_cfg.max_length} (--max-length) exceeds the model's "
                         f"max_position_embeddings={model_config.max_position_embeddings}")
    train, evaluation = (encode(tables[split].rows, base.tokenizer, text_column, pair_column, train_cfg.max_length,
                                labels, label_column) for split in ("train", "eval"))
    steps_per_epoch = -(-len(train.labels) // train_cfg.global_batch_size)
    num_steps = train_cfg.epochs * steps_per_epoch
    run = setup(model_config, len(labels), config, num_steps)
    is_main = jax.process_index() == 0
    result = {"labels": labels, "truncated": {"train": train.truncated, "eval": evaluation.truncated},
              "skipped_rows": {split: table.skipped for split, table in tables.items()}}
    if is_main and (train.truncated or evaluation.truncated):
        print(f"truncated to {train_cfg.max_length} tokens: {train.truncated} train and {evaluation.truncated} "
              f"eval examples", flush=True)
    if is_main and skip_bad_rows:
        print(f"skipped bad rows (--skip-bad-rows): {tables['train'].skipped} in {train_file}, "
              f"{tables['eval'].skipped} in {eval_file}", flush=True)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), train_cfg.max_to_keep)
    state, rng, history = _restore_or_init(run, checkpointer, base, config, labels, num_steps)
    step = int(state.step)
    if is_main:  # before the logger, which records config.json in TensorBoard
        _write_run_config(workdir, config, init_dir, train_file, eval_file, labels, model_config)
    bar = progress.progress_bar(num_steps, "step", is_main, initial=step, desc="fine-tune")
    logger = metrics_log.MetricsLogger(workdir, enabled=is_main, print_fn=bar.write, start_step=step)
    unreported = 0  # steps run since the bar last moved
    preemption, order = Preemption(), None
    try:
        with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.axis_rules(config.mesh)):
            while step < num_steps and not _patience_spent(history, train_cfg.patience):
                epoch, position = divmod(step, steps_per_epoch)
                if position == 0 or order is None:  # the example order is drawn once per epoch
                    order = batch_indices(len(train.labels), train_cfg.global_batch_size, train_cfg.seed, epoch)
                state = run.train_step(state, _global_batch(train, order[position], run.mesh), rng)
                checkpointer.check()
                step += 1
                unreported += 1
                epoch_end = step % steps_per_epoch == 0
                if step % train_cfg.log_every == 0 or epoch_end:
                    metrics = _train_metrics(jax.device_get(state.metrics))
                    if not np.isfinite(metrics["train/loss"]):
                        raise FloatingPointError(f"non-finite fine-tuning loss at step {step}; lower "
                                                 f"--learning-rate. Checkpoints and the best model are kept")
                    state = state.replace(metrics=jax.tree.map(jnp.zeros_like, state.metrics))
                    bar.update(unreported)  # device_get waited for these steps: the bar counts finished ones
                    unreported = 0
                    logger.write(step, metrics)
                if epoch_end:
                    scores = evaluate(run, state.params, evaluation, train_cfg.global_batch_size)
                    history.append({"epoch": epoch + 1, "step": step, "eval_accuracy": scores["eval/accuracy"],
                                    "eval_macro_f1": scores["eval/macro_f1"], "eval_loss": scores["eval/loss"]})
                    logger.write(step, scores | {"epoch": epoch + 1})
                    if _best(history) is history[-1]:
                        _save_best(workdir, run, state.params, model_config, labels, train_cfg.max_length,
                                   pair_column is not None, base.tokenizer.directory)
                preempted = preemption.check(step)
                if epoch_end or step % train_cfg.checkpoint_every == 0 or preempted:
                    checkpointer.save(step, state, rng, {"history": history, "labels": labels, "num_steps": num_steps})
                if preempted:
                    if is_main:
                        print(f"SIGTERM: saved a checkpoint at step {step}; run the same command to continue",
                              flush=True)
                    return result | {"best": _best(history), "history": history, "preempted": True}
    finally:
        bar.close()
        preemption.restore()
        checkpointer.close()
    if is_main and history:
        metrics_log.plot_curves(workdir, CURVES)
    return result | {"best": _best(history), "history": history}


def _restore_or_init(run: FinetuneRun, checkpointer: Checkpointer, base, config, labels, num_steps):
    """(state, rng, history) of the latest checkpoint, or a fresh state with the pretrained encoder."""
    restored = checkpointer.restore(run.abstract_state)
    if restored is not None:
        state, rng, extra = restored
        if extra["labels"] != labels or extra["num_steps"] != num_steps:
            raise ValueError(f"--workdir holds a fine-tuning run with labels {extra['labels']} and "
                             f"{extra['num_steps']} steps, not {labels} and {num_steps}; use a new --workdir")
        return state, rng, list(extra["history"])
    rng = jax.random.PRNGKey(config.train.seed)
    state = run.init(jax.random.fold_in(rng, 1))
    if not config.train.from_scratch:
        params = dict(state.params) | {"bert": jax.device_put(base.params["bert"], run.state_shardings.params["bert"])}
        state = state.replace(params=params)
    return state, rng, []


def _write_run_config(workdir, config, init_dir, train_file, eval_file, labels, model_config) -> None:
    tf.io.gfile.makedirs(workdir)
    with tf.io.gfile.GFile(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config.to_dict() | {"init": init_dir, "train_file": train_file, "eval_file": eval_file,
                                      "labels": labels, "model": dataclasses.asdict(model_config)}, f, indent=2)


def _save_best(workdir, run, params, model_config, labels, max_length, pairs, tokenizer_dir) -> None:
    """Writes the parameters (gathered from every device) and what `Classifier` needs; the weights
    go to a temporary name first, so an interrupted save never leaves a broken best model."""
    gathered = jax.device_get(run.gather(params))
    if jax.process_index() != 0:
        return
    pretrained.save_params(gathered, os.path.join(workdir, "model.safetensors"))
    with tf.io.gfile.GFile(os.path.join(workdir, SAVED), "w") as f:
        json.dump({"model": dataclasses.asdict(model_config), "labels": labels, "max_length": max_length,
                   "pairs": pairs}, f, indent=2)
    if not tf.io.gfile.exists(os.path.join(workdir, "tokenizer")):
        tokenizer_lib.copy_files(tokenizer_dir, os.path.join(workdir, "tokenizer"))


class Classifier:
    """A saved fine-tuned model: `predict(texts, pairs=None)` -> (labels, probabilities)."""

    def __init__(self, workdir: str):
        workdir = fs.absolute(workdir)
        path = os.path.join(workdir, SAVED)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"--model {workdir}: no {SAVED}; not a `bert-jax finetune` output")
        with tf.io.gfile.GFile(path) as f:
            saved = json.load(f)
        self.labels, self.max_length, self.pairs = saved["labels"], saved["max_length"], saved["pairs"]
        config = BertConfig(**saved["model"])
        model = BertClassifier(config, len(self.labels))
        self._apply = jax.jit(lambda p, i, m, s: jax.nn.softmax(model.apply({"params": p}, i, m, s), -1))
        self.params = pretrained.load_params(os.path.join(workdir, "model.safetensors"))
        self.tokenizer = tokenizer_lib.load(os.path.join(workdir, "tokenizer"))

    def predict(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64
                ) -> tuple[list[str], np.ndarray]:
        """The predicted labels (in the type the training data had: int labels are ints) and float32
        probabilities [len(texts), number of labels], columns in the order of `self.labels`."""
        rows = [{"text": t, "pair": p} for t, p in zip(texts, pairs or [""] * len(texts))]
        examples = encode(rows, self.tokenizer, "text", "pair" if self.pairs else None, self.max_length, None, None)
        out = [np.asarray(self._apply(self.params, examples.input_ids[i:i + batch_size],
                                      examples.input_mask[i:i + batch_size], examples.segment_ids[i:i + batch_size]))
               for i in range(0, len(texts), batch_size)]
        probabilities = np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)
        return [self.labels[k] for k in probabilities.argmax(-1)], probabilities
