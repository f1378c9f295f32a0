"""Sequence classification: `BertModel` + a classification head on labelled text (single texts or
pairs), fine-tuned by the one trainer (`bert_jax.training.trainer`): the same mesh and sharding
rules, jitted step with donated state, orbax checkpoints (resumed exactly, also after SIGTERM),
and TensorBoard / metrics.jsonl / curves.png logs as pretraining. Each epoch ends with accuracy
and macro-F1 on the eval set; the best epoch is saved as `model.safetensors` + `finetune.json` +
`tokenizer/`, which `bert-jax predict` and `Classifier` load.
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

from bert_jax import fs
from bert_jax.config.defaults import finetune_config
from bert_jax.config.validation import validate_finetuning
from bert_jax.data import finetune_data, tokenizer as tokenizer_lib
from bert_jax.data.finetune_data import Examples, batch_indices, encode, host_batch
from bert_jax.data.spec import BatchSpec
from bert_jax.inference import pretrained
from bert_jax.models.bert import BertConfig, BertModel, Dense
from bert_jax.training import evaluation, sharding, trainer
from bert_jax.training.checkpoint import Checkpointer
from bert_jax.training.optim import make_optimizer
from bert_jax.training.train_step import cross_entropy_and_hits

SAVED = "finetune.json"
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


class ClassificationTask:
    """Cross-entropy over the labels of `BatchSpec.classification(max_length)` batches, weighted by the
    0/1 example weights; eval sums a confusion matrix (see `bert_jax.training.train_step.Task`)."""

    sum_keys = ("loss_sum", "correct", "count")

    def __init__(self, model: BertConfig, num_labels: int, max_length: int):
        self.model, self.num_labels = model, num_labels
        self.batch_spec = BatchSpec.classification(max_length)
        self.module = BertClassifier(model, num_labels)

    def init(self, rng):
        batch = self.batch_spec.zeros(1)
        return self.module.init(rng, batch["input_ids"], batch["input_mask"], batch["segment_ids"])["params"]

    def _logits(self, params, batch, rng=None):
        rngs = None if rng is None else {"dropout": rng}
        return self.module.apply({"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                                 deterministic=rng is None, rngs=rngs)

    def totals(self, batch):
        return {"count": jnp.maximum(batch["weights"].sum(), 1.0)}

    def loss(self, params, batch, rng, totals):
        nll, hits = cross_entropy_and_hits(self._logits(params, batch, rng), batch["labels"])
        weights = batch["weights"]
        sums = {"loss_sum": jnp.sum(nll * weights), "correct": jnp.sum(hits * weights), "count": weights.sum()}
        return sums["loss_sum"] / totals["count"], sums

    def eval_sums(self, params, batch):
        logits, weights = self._logits(params, batch), batch["weights"]
        truth = jax.nn.one_hot(batch["labels"], self.num_labels) * weights[:, None]
        confusion = truth.T @ jax.nn.one_hot(jnp.argmax(logits, -1), self.num_labels)
        nll, _ = cross_entropy_and_hits(logits, batch["labels"])
        return {"confusion": confusion, "loss_sum": jnp.sum(nll * weights)}

    def train_summary(self, sums):
        sums = {k: float(v) for k, v in sums.items()}
        count, steps = max(sums["count"], 1e-9), max(sums["steps"], 1e-9)
        return {"train/loss": sums["loss_sum"] / count, "train/accuracy": sums["correct"] / count,
                "train/learning_rate": sums["learning_rate"] / steps, "train/grad_norm": sums["grad_norm"] / steps}

    def eval_summary(self, sums):
        accuracy, macro_f1 = finetune_data.scores(sums["confusion"])
        return {"eval/loss": float(sums["loss_sum"]) / max(float(sums["confusion"].sum()), 1e-9),
                "eval/accuracy": accuracy, "eval/macro_f1": macro_f1}


def _optimizer(train: ml_collections.ConfigDict, num_steps: int):
    """Pretraining's AdamW (decay mask, clipping) with warmup over `warmup_fraction` of the steps
    and linear decay to 0."""
    warmup = min(max(1, int(num_steps * train.warmup_fraction)), num_steps - 1)
    optim = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=train.learning_rate, warmup_steps=warmup, schedule="linear", end_lr_factor=0.0,
        weight_decay=train.weight_decay, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=train.grad_clip_norm))
    return make_optimizer(optim, num_steps)


def setup(model_config: BertConfig, num_labels: int, config: ml_collections.ConfigDict, num_steps: int) -> trainer.Run:
    """The classification task on the mesh of `config.mesh`, its optimizer and jitted steps."""
    mesh = sharding.make_mesh(dict(config.mesh))
    tx, schedule = _optimizer(config.train, num_steps)
    task = ClassificationTask(model_config, num_labels, config.train.max_length)
    return trainer.setup(task, mesh, sharding.axis_rules(config.mesh), tx, schedule, config.train.global_batch_size,
                         batch_flag=" (--batch-size)")


def _host_batch(examples: Examples, indices: np.ndarray) -> dict:
    return host_batch(examples, indices, jax.process_index(), jax.process_count())


def _train_batches(examples: Examples, config, steps_per_epoch: int, first: int, num_steps: int):
    """Host batches of steps `first + 1` .. `num_steps`; the example order is drawn once per epoch."""
    order = None
    for step in range(first, num_steps):
        epoch, position = divmod(step, steps_per_epoch)
        if position == 0 or order is None:
            order = batch_indices(len(examples.labels), config.train.global_batch_size, config.train.seed, epoch)
        yield _host_batch(examples, order[position])


def evaluate(run: trainer.Run, params, examples: Examples, global_batch: int) -> dict[str, float]:
    """Loss, accuracy and macro-F1 over every example of `examples` (no dropout)."""
    order = batch_indices(len(examples.labels), global_batch, seed=None)
    return evaluation.evaluate(run.task, run.eval_step, params, (_host_batch(examples, i) for i in order),
                               run.mesh, run.rules, len(order))


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
    The run starts from, in this order: `workdir`'s latest checkpoint, the pretrained encoder with a
    fresh head, random weights (`config.train.from_scratch`).
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
    train, eval_examples = (encode(tables[split].rows, base.tokenizer, text_column, pair_column, train_cfg.max_length,
                                labels, label_column) for split in ("train", "eval"))
    steps_per_epoch = -(-len(train.labels) // train_cfg.global_batch_size)
    num_steps = train_cfg.epochs * steps_per_epoch
    run = setup(model_config, len(labels), config, num_steps)
    is_main = jax.process_index() == 0
    result = {"labels": labels, "truncated": {"train": train.truncated, "eval": eval_examples.truncated},
              "skipped_rows": {split: table.skipped for split, table in tables.items()}}
    if is_main and (train.truncated or eval_examples.truncated):
        print(f"truncated to {train_cfg.max_length} tokens: {train.truncated} train and {eval_examples.truncated} "
              f"eval examples", flush=True)
    if is_main and skip_bad_rows:
        print(f"skipped bad rows (--skip-bad-rows): {tables['train'].skipped} in {train_file}, "
              f"{tables['eval'].skipped} in {eval_file}", flush=True)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), train_cfg.max_to_keep)
    init_from = None if train_cfg.from_scratch else (lambda params: dict(params) | {"bert": base.params["bert"]})
    start = trainer.restore_or_init(run, checkpointer, train_cfg.seed, init_from, workdir)
    if start.source == "resume" and (start.extra["labels"] != labels or start.extra["num_steps"] != num_steps):
        checkpointer.close()
        raise ValueError(f"--workdir holds a fine-tuning run with labels {start.extra['labels']} and "
                         f"{start.extra['num_steps']} steps, not {labels} and {num_steps}; use a new --workdir")
    history = list(start.extra.get("history", []))
    trainer.write_config(workdir, config.to_dict() | {  # before the logger, which records config.json
        "init": init_dir, "train_file": train_file, "eval_file": eval_file, "labels": labels,
        "model": dataclasses.asdict(model_config)})
    gather = jax.jit(lambda params: params, out_shardings=sharding.replicated(run.mesh))

    def on_eval(step, params, scores):
        history.append({"epoch": scores["epoch"], "step": step, "eval_accuracy": scores["eval/accuracy"],
                        "eval_macro_f1": scores["eval/macro_f1"], "eval_loss": scores["eval/loss"]})
        if _best(history) is history[-1]:
            _save_best(workdir, jax.device_get(gather(params)), model_config, labels, train_cfg.max_length,
                       pair_column is not None, base.tokenizer.directory)

    hooks = trainer.Hooks(
        evaluate=lambda params, step: evaluate(run, params, eval_examples, train_cfg.global_batch_size) | {
            "epoch": step // steps_per_epoch},
        on_eval=on_eval, stop=lambda: _patience_spent(history, train_cfg.patience),
        extra=lambda: {"history": history, "labels": labels, "num_steps": num_steps})
    cadence = trainer.Cadence(num_steps, train_cfg.log_every, steps_per_epoch, train_cfg.checkpoint_every,
                              log_at_eval=True, checkpoint_at_eval=True)
    batches = _train_batches(train, config, steps_per_epoch, int(start.state.step), num_steps)
    done = trainer.fit(run, start, batches, cadence, checkpointer, workdir, hooks, curves=CURVES, desc="fine-tune",
                       describe=f"fine-tuning {model_config.num_layers}-layer BERT on {len(labels)} labels",
                       nonfinite_hint="lower --learning-rate; the best model so far is kept")
    return result | {"best": _best(history), "history": history} | ({"preempted": True} if done.preempted else {})


def _save_best(workdir, params, model_config, labels, max_length, pairs, tokenizer_dir) -> None:
    """Writes the parameters (gathered from every device) and what `Classifier` needs; the weights
    go to a temporary name first, so an interrupted save never leaves a broken best model."""
    if jax.process_index() != 0:
        return
    pretrained.save_params(params, os.path.join(workdir, "model.safetensors"))
    with fs.open_text(os.path.join(workdir, SAVED), "w") as f:
        json.dump({"model": dataclasses.asdict(model_config), "labels": labels, "max_length": max_length,
                   "pairs": pairs}, f, indent=2)
    if not fs.exists(os.path.join(workdir, "tokenizer")):
        tokenizer_lib.copy_files(tokenizer_dir, os.path.join(workdir, "tokenizer"))


class Classifier:
    """A saved fine-tuned model: `predict(texts, pairs=None)` -> (labels, probabilities)."""

    def __init__(self, workdir: str):
        workdir = fs.absolute(workdir)
        path = os.path.join(workdir, SAVED)
        if not fs.exists(path):
            raise FileNotFoundError(f"--model {workdir}: no {SAVED}; not a `bert-jax finetune` output")
        with fs.open_text(path) as f:
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
