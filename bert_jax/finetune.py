"""Fine-tuning `BertModel` + a classification head on labelled text (single texts or pairs).

`bert-jax finetune` reads TSV/CSV/JSON lines, keeps the label names, trains with AdamW and warmup
+ linear decay for a few epochs with early stopping on eval accuracy, and saves the best model
(`model.safetensors`, `finetune.json`, `tokenizer/`); `bert-jax predict` and `Classifier` use it.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from bert_jax import pretrained, tokenizer as tokenizer_lib
from bert_jax.model import BertConfig, BertModel

SAVED = "finetune.json"


class BertClassifier(nn.Module):
    """BertModel, dropout, and a dense layer on the pooled [CLS] output."""

    config: BertConfig
    num_labels: int

    @nn.compact
    def __call__(self, input_ids, input_mask, segment_ids, deterministic: bool = True):
        _, pooled = BertModel(self.config, name="bert")(input_ids, input_mask, segment_ids, deterministic)
        pooled = nn.Dropout(self.config.hidden_dropout)(pooled, deterministic=deterministic)
        init = nn.initializers.normal(self.config.initializer_range)
        return nn.Dense(self.num_labels, kernel_init=init, name="classifier")(pooled).astype(jnp.float32)


@dataclasses.dataclass
class Examples:
    """Encoded examples: ids, mask and segments [N, S], label ids [N], and truncation count."""

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    labels: np.ndarray
    truncated: int


def read_table(path: str, columns: list[str]) -> list[dict]:
    """Rows of a .tsv, .csv or .jsonl file; every name in `columns` must exist."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8", newline="\n") as f:  # a bare \r inside a text is not a line end
        if path.endswith((".jsonl", ".json")):
            rows = [json.loads(line) for line in f if line.strip()]
        elif path.endswith(".tsv"):  # TSV has no quoting: '"' and '\r' in a review are just characters
            lines = [line.rstrip("\n").removesuffix("\r").split("\t") for line in f if line.strip()]
            rows = [dict(zip(lines[0], fields)) for fields in lines[1:]] if lines else []
        else:
            rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: unknown column(s) {missing}; the file has {sorted(rows[0])}")
    for number, row in enumerate(rows, 2):
        if any(row.get(c) is None for c in columns):
            raise ValueError(f"{path}: line {number} lacks column(s) {[c for c in columns if row.get(c) is None]}")
    return rows


def encode(rows, tok: tokenizer_lib.Tokenizer, text_column: str, pair_column: str | None, max_length: int,
           labels: list[str] | None, label_column: str | None) -> Examples:
    """[CLS] text [SEP] (pair [SEP]) ids padded to `max_length`; longer texts are truncated, counted."""
    n = len(rows)
    ids = np.full((n, max_length), tok.pad_id, np.int32)
    segments = np.zeros((n, max_length), np.int32)
    firsts = tok.encode_batch([str(r[text_column]) for r in rows])
    seconds = tok.encode_batch([str(r[pair_column]) for r in rows]) if pair_column else [[] for _ in rows]
    truncated = 0
    budget = max_length - (3 if pair_column else 2)
    for i, (a, b) in enumerate(zip(firsts, seconds)):
        if len(a) + len(b) > budget:
            truncated += 1
            while len(a) + len(b) > budget:
                (a if len(a) >= len(b) else b).pop()
        row = [tok.cls_id] + a + [tok.sep_id] + (b + [tok.sep_id] if pair_column else [])
        ids[i, :len(row)] = row
        segments[i, len(a) + 2:len(row)] = 1
    label_ids = np.zeros(n, np.int32)
    if label_column:
        index = {name: k for k, name in enumerate(labels)}
        for i, r in enumerate(rows):
            name = str(r[label_column])
            if name not in index:
                raise ValueError(f"label {name!r} (row {i + 1}) did not occur in the training data {labels}")
            label_ids[i] = index[name]
    return Examples(ids, (ids != tok.pad_id).astype(np.int32), segments, label_ids, truncated)


def accuracy_and_macro_f1(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> tuple[float, float]:
    f1s = []
    for k in range(num_labels):
        tp = np.sum((predictions == k) & (labels == k))
        precision = tp / max(1, np.sum(predictions == k))
        recall = tp / max(1, np.sum(labels == k))
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(predictions == labels)), float(np.mean(f1s))


def _batches(examples: Examples, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(len(examples.labels)) if rng is not None else np.arange(len(examples.labels))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield {k: getattr(examples, k)[idx] for k in ("input_ids", "input_mask", "segment_ids", "labels")}


def finetune(init_dir: str, train_file: str, eval_file: str, workdir: str, text_column: str, label_column: str,
             pair_column: str | None = None, max_length: int = 128, batch_size: int = 32, epochs: int = 3,
             learning_rate: float = 5e-5, warmup_fraction: float = 0.1, patience: int = 1, seed: int = 0,
             from_scratch: bool = False) -> dict:
    """Fine-tunes the encoder of `init_dir` and saves the best epoch (by eval accuracy) in `workdir`.

    `from_scratch` keeps the architecture and tokenizer of `init_dir` but starts from random
    weights: the baseline that shows what pretraining buys."""
    base = pretrained.load(init_dir)
    columns = [text_column, label_column] + ([pair_column] if pair_column else [])
    train_rows, eval_rows = read_table(train_file, columns), read_table(eval_file, columns)
    labels = sorted({str(r[label_column]) for r in train_rows})
    train = encode(train_rows, base.tokenizer, text_column, pair_column, max_length, labels, label_column)
    evaluation = encode(eval_rows, base.tokenizer, text_column, pair_column, max_length, labels, label_column)
    model = BertClassifier(base.config, len(labels))
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), train.input_ids[:1], train.input_mask[:1],
                                      train.segment_ids[:1])["params"])
    if not from_scratch:
        params["bert"] = base.params["bert"]
    steps = epochs * -(-len(train.labels) // batch_size)
    warmup = max(1, int(steps * warmup_fraction))
    schedule = optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup),
                                     optax.linear_schedule(learning_rate, 0.0, steps - warmup)], [warmup])
    tx = optax.adamw(schedule, weight_decay=0.01)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, batch, rng):
        def loss_fn(p):
            logits = model.apply({"params": p}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                                 deterministic=False, rngs={"dropout": rng})
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    history, best, waited = [], None, 0
    rng = np.random.default_rng(seed)
    step = 0
    for epoch in range(1, epochs + 1):
        losses = []
        for batch in _batches(train, batch_size, rng):
            params, opt_state, loss = train_step(params, opt_state, batch, jax.random.PRNGKey(step))
            losses.append(float(loss))
            step += 1
        probabilities = _probabilities(model, params, evaluation, batch_size)
        acc, f1 = accuracy_and_macro_f1(probabilities.argmax(-1), evaluation.labels, len(labels))
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "eval_accuracy": acc, "eval_macro_f1": f1})
        print(json.dumps(history[-1]), flush=True)
        if best is None or acc > best["eval_accuracy"]:
            best, waited = history[-1], 0
            _save(workdir, model, params, base, labels, max_length, pair_column is not None)
        else:
            waited += 1
            if waited >= patience:
                break
    return {"best": best, "history": history, "labels": labels,
            "truncated": {"train": train.truncated, "eval": evaluation.truncated}}


def _probabilities(model, params, examples: Examples, batch_size: int) -> np.ndarray:
    apply = _apply_fn(model.config, model.num_labels)
    out = [np.asarray(jax.nn.softmax(apply(params, b["input_ids"], b["input_mask"], b["segment_ids"]), -1))
           for b in _batches(examples, batch_size, None)]
    return np.concatenate(out)


@functools.lru_cache(maxsize=8)
def _apply_fn(config: BertConfig, num_labels: int):
    model = BertClassifier(config, num_labels)
    return jax.jit(lambda p, i, m, s: model.apply({"params": p}, i, m, s))


def _save(workdir, model, params, base, labels, max_length, pairs) -> None:
    from safetensors.numpy import save_file

    os.makedirs(workdir, exist_ok=True)
    flat = {"/".join(k): np.ascontiguousarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
    save_file(flat, os.path.join(workdir, "model.safetensors"))
    with open(os.path.join(workdir, SAVED), "w") as f:
        json.dump({"model": dataclasses.asdict(base.config), "labels": labels, "max_length": max_length,
                   "pairs": pairs}, f, indent=2)
    if not os.path.exists(os.path.join(workdir, "tokenizer")):
        shutil.copytree(base.tokenizer.directory, os.path.join(workdir, "tokenizer"),
                        ignore=lambda d, names: [n for n in names if n.endswith((".safetensors", ".bin"))])


class Classifier:
    """A saved fine-tuned model: `predict(texts, pairs=None)` -> (label names, probabilities)."""

    def __init__(self, workdir: str):
        from safetensors.numpy import load_file

        path = os.path.join(workdir, SAVED)
        if not os.path.exists(path):
            raise FileNotFoundError(f"--model {workdir}: no {SAVED}; not a `bert-jax finetune` output")
        with open(path) as f:
            saved = json.load(f)
        self.labels, self.max_length, self.pairs = saved["labels"], saved["max_length"], saved["pairs"]
        self.model = BertClassifier(BertConfig(**saved["model"]), len(self.labels))
        flat = load_file(os.path.join(workdir, "model.safetensors"))
        self.params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
        self.tokenizer = tokenizer_lib.load(os.path.join(workdir, "tokenizer"))

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> tuple[list[str], np.ndarray]:
        rows = [{"text": t, "pair": p} for t, p in zip(texts, pairs or [""] * len(texts))]
        examples = encode(rows, self.tokenizer, "text", "pair" if self.pairs else None, self.max_length, None, None)
        probabilities = _probabilities(self.model, self.params, examples, 64)
        return [self.labels[k] for k in probabilities.argmax(-1)], probabilities
