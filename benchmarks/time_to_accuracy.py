"""Time to accuracy: our pretraining against transformers' BertForMaskedLM (PyTorch), side by side.

    python benchmarks/time_to_accuracy.py fidelity [--steps 1000] [--schedule-steps 3000] [--seq 64] [--batch 64]
    python benchmarks/time_to_accuracy.py target [--target 0.12] [--steps 3000] [--seq 64]
    python benchmarks/time_to_accuracy.py ... --device gpu    # the same comparison on an accelerator

Both modes pretrain BERT-Tiny (L2/H128; `--layers`, `--hidden` for others) on the unlabelled
in-domain reviews (../shared/data/nsmc_unlabelled_reviews.txt, `--corpus` for other text) with a
SentencePiece unigram tokenizer of `--vocab` pieces trained on that text, `--pair-task none`.
Every batch comes from our input pipeline (`bert_jax.data.input_pipeline`, dynamic whole-word masking)
and is fed to both models: ours (the jitted `bert_jax.training.train_step`) and transformers'
BertForMaskedLM in a plain PyTorch loop (labels -100 except at our masked positions,
torch.optim.AdamW with our learning rate at every step, no decay on LayerNorm and biases,
gradient clipping 1.0). The two alternate in blocks of `--block` steps, so both see the same
machine; seconds count training steps only (batches are fetched and evaluation runs outside them).
Shared machines drift: the load average is printed with every figure. On CPU the process
re-executes itself with the glibc malloc settings of `bert-jax pretrain`
(`bert_jax.backend.reexec_with_tuned_malloc`; `--default-malloc` keeps glibc's defaults); both
models run under the same settings.

fidelity: the original BERT recipe (post-LN, dropout 0.1) on both sides, starting from the same
initial weights (ours exported through `bert_jax.models.hf_weights`), AdamW `--lr`, `--warmup` steps,
cosine decay over `--schedule-steps` (default `--steps`). Prints train MLM loss of both at equal
steps (means over `--block` steps) and the wall-time ratio ours / transformers.

target: eval MLM accuracy on the same fixed, masked held-out batches (documents never trained
on) against steps and seconds, until each run reaches `--target` or `--steps`. Two count models
place the target first (`context_baselines`): the most frequent piece everywhere (context-free)
and the piece seen most often between the same two visible neighbours in the training text. On
the reviews with whole-word masking they score 0.031 and 0.096, so the default target 0.12 needs
more context than adjacent pieces give. transformers runs
its standard recipe: post-LN BERT, dropout 0.1, AdamW `--hf-lr` with linear warmup (`--warmup`)
and linear decay, on examples built as prepare-data builds them by default (BERT's instance
builder); ours runs the packaged `--config` (default tiny_budget, bert_jax/config/presets/tiny_budget.py)
on `--pack-sequences` data. Prints both curves, the seconds and steps each needed, their ratio,
and writes one PNG with both curves (`--plot`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REVIEWS = os.path.join(HERE, "..", "..", "shared", "data", "nsmc_unlabelled_reviews.txt")
JAX_PLATFORMS = {"cpu": "cpu", "gpu": "cuda"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["fidelity", "target"])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--corpus", default=REVIEWS,
                        help="plain text, one sentence per line, blank line between documents")
    parser.add_argument("--work", default="/tmp/bench-time-to-accuracy", help="tokenizer and prepared data (reused)")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--seq", type=int, default=64, help="sequence length")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="steps of each run (fidelity 1000, target 3000)")
    parser.add_argument("--schedule-steps", type=int, default=None,
                        help="fidelity: length of the learning-rate schedule (default --steps); --steps 250 "
                             "--schedule-steps 3000 runs the first 250 steps of a 3,000-step run")
    parser.add_argument("--block", type=int, default=50, help="steps per turn when the two alternate")
    parser.add_argument("--lr", type=float, default=1e-3, help="fidelity: peak learning rate of both")
    parser.add_argument("--warmup", type=int, default=200, help="warmup steps (fidelity: both; target: transformers)")
    parser.add_argument("--hf-lr", type=float, default=1e-3, help="target: transformers' peak learning rate")
    parser.add_argument("--config", default="tiny_budget", help="target: our packaged recipe")
    parser.add_argument("--target", type=float, default=0.12, help="target: eval MLM accuracy to reach")
    parser.add_argument("--eval-every", type=int, default=50, help="target: steps between evaluations")
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--plot", default="time_to_accuracy.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default malloc settings (bert-jax training commands tune them)")
    args = parser.parse_args()
    args.steps = args.steps or (1000 if args.mode == "fidelity" else 3000)
    return args


def load() -> str:
    """The 1-, 5- and 15-minute load averages, as `uptime` prints them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def prepare(args, pack: bool, mask_prob: float = 0.15) -> str:
    """Trains the tokenizer once, prepares `--corpus` at `--seq` tokens (packed or BERT's
    instances) once; returns the data directory. The eval split holds the same documents either way."""
    from bert_jax.data import tokenizer_training
    from bert_jax.data.pretraining_data import DataSettings, prepare_data

    tok = os.path.join(args.work, f"tok{args.vocab}")
    if not os.path.exists(os.path.join(tok, "tokenizer.json")):
        tokenizer_training.train([args.corpus], tok, vocab_size=args.vocab)
    data = os.path.join(args.work, f"data{args.vocab}_{args.seq}_{mask_prob}{'_packed' if pack else ''}")
    if not os.path.exists(os.path.join(data, "metadata.json")):
        prepare_data([args.corpus], tok, data, DataSettings(
            max_seq_length=args.seq, pair_task="none", pack_sequences=pack, mask_prob=mask_prob),
            workers=os.cpu_count() or 1, progress=False)
    return data


def original_recipe(args, steps: int, lr: float, schedule: str):
    """Our config of the original BERT recipe (post-LN, dropout 0.1) at the benchmark's sizes."""
    from bert_jax.config.defaults import bert_config

    config = bert_config(num_layers=args.layers, hidden_size=args.hidden, max_position_embeddings=args.seq)
    return sized(config, args, steps, lr, args.warmup, schedule)


def sized(config, args, steps: int, lr: float | None = None, warmup: int | None = None, schedule: str | None = None):
    """`config` with the benchmark's sequence, batch and steps (and optimizer settings when given)."""
    config.model.max_position_embeddings = args.seq
    config.data.update(max_seq_length=args.seq, max_predictions_per_seq=0)  # follow the data
    config.train.update(global_batch_size=args.batch, num_steps=steps, seed=args.seed)
    for key, value in (("learning_rate", lr), ("warmup_steps", warmup), ("schedule", schedule)):
        if value is not None:
            config.optim[key] = value
    return config


def pipeline_batches(config, data_dir: str, metadata, steps: int):
    """`steps` training batches of our input pipeline, as `bert-jax pretrain` reads them."""
    from bert_jax.data import input_pipeline

    return input_pipeline.train_batches(data_dir, metadata, config.train.global_batch_size, steps,
                                        seed=config.train.seed, mask_prob=config.data.mask_prob,
                                        shuffle_buffer=config.data.shuffle_buffer)


class Ours:
    """Our jitted train and eval steps on one config and data directory."""

    def __init__(self, config, data_dir: str):
        import jax

        from bert_jax.data.spec import DataSpec
        from bert_jax.tasks.pretraining import setup

        self.config, self.data_dir = config, data_dir
        self.metadata = DataSpec.read(data_dir)
        self.run = setup(config, self.metadata)
        self.state = self.run.init(jax.random.fold_in(jax.random.PRNGKey(config.train.seed), 1))
        self.rng = jax.random.PRNGKey(config.train.seed)
        self.step = 0

    def warm_up(self, batch: dict) -> None:
        """Compiles the train step on a copy of the state (the step donates its input), so that
        timed steps exclude compilation and the real state is untouched."""
        import jax
        import jax.numpy as jnp

        from bert_jax.training.sharding import global_batch

        with jax.set_mesh(self.run.mesh):
            copy = jax.tree.map(jnp.copy, self.state)
            jax.block_until_ready(self.run.train_step(copy, global_batch(batch, self.run.mesh), self.rng))

    def batches(self, steps: int):
        return pipeline_batches(self.config, self.data_dir, self.metadata, steps)

    def train(self, batches: list[dict]) -> tuple[float, list[float]]:
        """Seconds for these steps and the train MLM loss of each."""
        import jax

        from bert_jax.training.sharding import global_batch

        device_batches = [global_batch(b, self.run.mesh) for b in batches]
        jax.block_until_ready(device_batches)
        metrics = []
        start = time.perf_counter()
        with jax.set_mesh(self.run.mesh):
            for batch in device_batches:
                self.state, m = self.run.train_step(self.state, batch, self.rng)
                metrics.append(m)
            jax.block_until_ready(self.state)
        seconds = time.perf_counter() - start
        self.step += len(batches)
        host = jax.device_get(metrics)
        return seconds, [m["mlm_loss_sum"] / max(m["mlm_weight"], 1.0) for m in host]

    def accuracy(self, eval_batches: list[dict]) -> float:
        """MLM accuracy over the masked positions of `eval_batches`, without dropout."""
        import jax

        from bert_jax.training.sharding import global_batch

        correct = total = 0.0
        with jax.set_mesh(self.run.mesh):
            for batch in eval_batches:
                sums = jax.device_get(self.run.eval_step(self.state.params, global_batch(batch, self.run.mesh)))
                correct, total = correct + sums["mlm_correct"], total + sums["mlm_weight"]
        return correct / max(total, 1.0)


class Transformers:
    """transformers' BertForMaskedLM trained by a plain PyTorch loop with our learning rate schedule."""

    def __init__(self, config, model_config, pad_id: int, device: str, init_params=None):
        """`config`: the experiment config (optim, train); `model_config`: its resolved BertConfig."""
        import torch
        import transformers

        from bert_jax.inference import hf
        from bert_jax.models import hf_weights
        from bert_jax.training.optim import learning_rate_schedule

        torch.manual_seed(config.train.seed)
        torch.set_num_threads(os.cpu_count() or 1)
        self.torch = torch
        self.device = torch.device("cuda" if device == "gpu" else "cpu")
        hf_config = transformers.BertConfig(**hf.hf_config(model_config, pad_id))
        self.model = transformers.BertForMaskedLM(hf_config)
        if init_params is not None:  # our initial weights, under transformers' names
            converted = hf_weights.params_to_hf(init_params, model_config)
            state = {k: torch.from_numpy(v.copy()) for k, v in converted.items()}
            missing, _ = self.model.load_state_dict(state, strict=False)
            if missing:
                raise RuntimeError(f"transformers' model lacks our weights for {missing}")
        self.model.to(self.device).train()
        decay = [p for n, p in self.model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
        rest = [p for n, p in self.model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
        o = config.optim
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                            {"params": rest, "weight_decay": 0.0}],
                                           lr=0.0, betas=(o.b1, o.b2), eps=o.eps, fused=device == "gpu" or None)
        self.schedule = learning_rate_schedule(o, config.train.num_steps)
        self.clip = o.grad_clip_norm
        self.autocast = torch.autocast("cuda", torch.bfloat16) if device == "gpu" else None
        self.step = 0

    def _inputs(self, batch: dict) -> dict:
        """Our batch as BertForMaskedLM's arguments: labels -100 except at real masked positions."""
        import numpy as np

        labels = np.full(batch["input_ids"].shape, -100, np.int64)
        rows, slots = np.nonzero(batch["masked_lm_weights"] > 0)
        labels[rows, batch["masked_lm_positions"][rows, slots]] = batch["masked_lm_ids"][rows, slots]
        t = lambda x: self.torch.from_numpy(np.asarray(x, np.int64)).to(self.device)  # noqa: E731
        return {"input_ids": t(batch["input_ids"]), "attention_mask": t(batch["input_mask"]),
                "token_type_ids": t(batch["segment_ids"]), "labels": t(labels)}

    def _forward(self, inputs):
        if self.autocast is None:
            return self.model(**inputs)
        with self.autocast:
            return self.model(**inputs)

    def train(self, batches: list[dict]) -> tuple[float, list[float]]:
        """Seconds for these steps and the train MLM loss of each."""
        inputs = [self._inputs(b) for b in batches]
        rates = [float(self.schedule(self.step + i)) for i in range(len(batches))]
        losses = []
        start = time.perf_counter()
        for rate, batch in zip(rates, inputs):
            for group in self.optimizer.param_groups:
                group["lr"] = rate
            loss = self._forward(batch).loss
            loss.backward()
            if self.clip > 0:
                self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        losses = [float(x) for x in losses]  # waits for the device
        seconds = time.perf_counter() - start
        self.step += len(batches)
        return seconds, losses

    def accuracy(self, eval_batches: list[dict]) -> float:
        correct = total = 0
        self.model.eval()
        with self.torch.no_grad():
            for batch in eval_batches:
                inputs = self._inputs(batch)
                labels = inputs.pop("labels")
                predicted = self._forward(inputs).logits.argmax(-1)
                real = labels != -100
                correct += int((predicted[real] == labels[real]).sum())
                total += int(real.sum())
        self.model.train()
        return correct / max(total, 1)


def _unmasked(batch: dict):
    """The batch's input ids with the masked positions' labels put back: the original text."""
    import numpy as np

    ids = batch["input_ids"].copy()
    rows, slots = np.nonzero(batch["masked_lm_weights"] > 0)
    ids[rows, batch["masked_lm_positions"][rows, slots]] = batch["masked_lm_ids"][rows, slots]
    return ids, batch["input_mask"].astype(bool)


def _most_frequent_after(keys, targets):
    """For every distinct key, the target seen most often with it: (sorted keys, their targets)."""
    import numpy as np

    pairs, counts = np.unique(np.stack([keys, targets]), axis=1, return_counts=True)
    order = np.lexsort((-counts, pairs[0]))  # by key, then most frequent first
    first = np.concatenate([[True], np.diff(pairs[0, order]) != 0])
    return pairs[0, order][first], pairs[1, order][first]


def context_baselines(train_batches, eval_batches: list[dict], vocab_size: int, special_ids: dict) -> dict:
    """Eval MLM accuracy of two count models, to place a target that needs context: `context-free`
    predicts the training text's most frequent piece (special tokens aside) everywhere; `neighbour counts` predicts the
    piece seen most often between the two visible neighbours of the masked position in the
    training text (falling back to the left neighbour alone, the right one alone, then the most
    frequent piece where a neighbour is masked or the pair is unseen). A model above both uses more
    than adjacent-piece statistics."""
    import numpy as np

    mask_id, special = special_ids["[MASK]"], np.asarray(sorted(special_ids.values()))
    unigram = np.zeros(vocab_size, np.int64)
    left, middle, right = [], [], []
    for batch in train_batches:
        ids, real = _unmasked(batch)
        unigram += np.bincount(ids[real], minlength=vocab_size)
        window = real[:, :-2] & real[:, 1:-1] & real[:, 2:] & ~np.isin(ids[:, 1:-1], special)
        left.append(ids[:, :-2][window])
        middle.append(ids[:, 1:-1][window])
        right.append(ids[:, 2:][window])
    left, middle, right = (np.concatenate(x).astype(np.int64) for x in (left, middle, right))
    unigram[special] = 0
    top = int(np.argmax(unigram))
    tables = [_most_frequent_after(left * vocab_size + right, middle), _most_frequent_after(left, middle),
              _most_frequent_after(right, middle)]

    def lookup(table, keys):
        known, targets = table
        at = np.clip(np.searchsorted(known, keys), 0, len(known) - 1)
        return np.where(known[at] == keys, targets[at], -1)

    hits = {"context-free": 0, "neighbour counts": 0}
    total = 0
    for batch in eval_batches:
        ids = batch["input_ids"].astype(np.int64)
        rows, slots = np.nonzero(batch["masked_lm_weights"] > 0)
        at = batch["masked_lm_positions"][rows, slots]
        truth = batch["masked_lm_ids"][rows, slots]
        a = np.where(at > 0, ids[rows, np.maximum(at - 1, 0)], mask_id)
        b = np.where(at + 1 < ids.shape[1], ids[rows, np.minimum(at + 1, ids.shape[1] - 1)], mask_id)
        guess = np.full(len(truth), top)
        for table, keys, usable in reversed([(tables[0], a * vocab_size + b, (a != mask_id) & (b != mask_id)),
                                             (tables[1], a, a != mask_id), (tables[2], b, b != mask_id)]):
            found = np.where(usable, lookup(table, keys), -1)
            guess = np.where(found >= 0, found, guess)
        hits["context-free"] += int((truth == top).sum())
        hits["neighbour counts"] += int((guess == truth).sum())
        total += len(truth)
    return {name: count / max(total, 1) for name, count in hits.items()}


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def fidelity(args) -> None:
    import jax
    from flax import linen as nn

    from bert_jax.data.spec import DataSpec

    data = prepare(args, pack=False)
    metadata = DataSpec.read(data)
    config = original_recipe(args, args.schedule_steps or args.steps, args.lr, "cosine")
    ours = Ours(config, data)
    theirs = Transformers(config, ours.run.task.model, metadata.pad_id, args.device,
                          init_params=jax.device_get(nn.meta.unbox(ours.state.params)))
    batches = ours.batches(args.steps)
    print(f"fidelity: L{args.layers}/H{args.hidden}, {args.seq} x {args.batch}, AdamW {args.lr}, warmup {args.warmup}, "
          f"cosine over {config.train.num_steps} steps (the first {args.steps} run), dropout 0.1, same initial "
          f"weights and batches; {args.device}")
    print(f"| steps | ours: train MLM loss (mean of the last {args.block} steps) | transformers: same "
          "| load 1/5/15 min |")
    print("|---:|---:|---:|---|", flush=True)
    ratios, seconds = [], {"ours": 0.0, "transformers": 0.0}
    for done in range(0, args.steps, args.block):
        block = take(batches, min(args.block, args.steps - done))
        if done == 0:
            ours.warm_up(block[0])
        t_ours, l_ours = ours.train(block)
        t_theirs, l_theirs = theirs.train(block)
        seconds["ours"] += t_ours
        seconds["transformers"] += t_theirs
        ratios.append(t_ours / t_theirs)
        print(f"| {ours.step} | {statistics.mean(l_ours):.3f} | {statistics.mean(l_theirs):.3f} | {load()} |",
              flush=True)
    print(f"wall time of {args.steps} steps: ours {seconds['ours']:.1f} s "
          f"({args.steps / seconds['ours']:.2f} steps/s), "
          f"transformers {seconds['transformers']:.1f} s ({args.steps / seconds['transformers']:.2f} steps/s); "
          f"ours/transformers {seconds['ours'] / seconds['transformers']:.3f} (median of per-block ratios "
          f"{statistics.median(ratios):.3f}); load {load()}")


def our_recipe(args, steps: int):
    """The packaged `--config` at the benchmark's sizes; its warmup keeps its share of the steps."""
    from bert_jax.config.loading import load_config

    config = load_config(args.config)
    warmup = round(config.optim.warmup_steps / config.train.num_steps * steps)
    config.model.update(num_layers=args.layers, hidden_size=args.hidden, num_heads=max(1, args.hidden // 64),
                        intermediate_size=4 * args.hidden)
    return sized(config, args, steps, warmup=warmup)


def target(args) -> None:
    from bert_jax.data import input_pipeline
    from bert_jax.data.spec import DataSpec
    from bert_jax.tasks.pretraining import resolve_model_config

    recipe = our_recipe(args, args.steps)
    plain, packed = prepare(args, pack=False), prepare(args, pack=True, mask_prob=recipe.data.mask_prob)
    metadata = DataSpec.read(plain)
    eval_batches = list(input_pipeline.eval_batches(plain, metadata, args.batch, args.eval_batches, seed=args.seed,
                                                    mask_prob=0.15))
    ours = Ours(recipe, packed)
    reference = original_recipe(args, args.steps, args.hf_lr, "linear")
    theirs = Transformers(reference, resolve_model_config(reference, metadata), metadata.pad_id,
                          args.device)
    runs = {"ours": (ours, ours.batches(args.steps)),
            "transformers": (theirs, pipeline_batches(reference, plain, metadata, args.steps))}
    masked = sum(int((b["masked_lm_weights"] > 0).sum()) for b in eval_batches)
    print(f"target: eval MLM accuracy {args.target} on {masked} "
          f"masked held-out tokens; L{args.layers}/H{args.hidden}, {args.seq} x {args.batch}, at most {args.steps} "
          f"steps each; {args.device}")
    epoch = pipeline_batches(reference, plain, metadata, metadata.splits["train"].examples // args.batch)
    baselines = context_baselines(epoch, eval_batches, metadata.vocab_size, metadata.special_ids)
    print("  count models on the same masked tokens (one epoch of the training text): "
          + ", ".join(f"{name} {value:.4f}" for name, value in baselines.items()), flush=True)
    print(f"  ours: --config {args.config} on packed examples: {dict(ours.config.model)}; {dict(ours.config.optim)}; "
          f"mask_prob {ours.config.data.mask_prob}")
    print(f"  transformers: BertForMaskedLM, post-LN, dropout 0.1, AdamW {args.hf_lr}, warmup {args.warmup}, "
          "linear decay")
    curves = {name: [(0, 0.0, run.accuracy(eval_batches))] for name, (run, _) in runs.items()}
    reached: dict[str, tuple[int, float]] = {}
    seconds = {name: 0.0 for name in runs}
    for done in range(0, args.steps, args.eval_every):
        for name, (run, batches) in runs.items():
            if name in reached:
                continue
            block = take(batches, min(args.eval_every, args.steps - done))
            if done == 0 and name == "ours":
                ours.warm_up(block[0])
            seconds[name] += run.train(block)[0]
            accuracy = run.accuracy(eval_batches)
            curves[name].append((run.step, seconds[name], accuracy))
            print(f"  {name}: step {run.step}, {seconds[name]:.1f} s, eval MLM accuracy {accuracy:.4f}; load {load()}",
                  flush=True)
            if accuracy >= args.target:
                reached[name] = (run.step, seconds[name])
        if len(reached) == len(runs):
            break
    report_target(args, curves, reached, seconds)


def report_target(args, curves: dict, reached: dict, seconds: dict) -> None:
    """Prints both curves, the time and steps each needed and their ratio; writes the PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("| run | step | training seconds | eval MLM accuracy |")
    print("|---|---:|---:|---:|")
    for name, points in curves.items():
        for step, sec, acc in points:
            print(f"| {name} | {step} | {sec:.1f} | {acc:.4f} |")
    for name in curves:
        if name in reached:
            print(f"{name}: {args.target} reached at step {reached[name][0]} after {reached[name][1]:.1f} s")
        else:
            print(f"{name}: {args.target} not reached in {curves[name][-1][0]} steps ({seconds[name]:.1f} s; "
                  f"best {max(a for _, _, a in curves[name]):.4f})")
    if "ours" in reached and "transformers" in reached:
        print(f"time to {args.target}: ours/transformers = {reached['ours'][1] / reached['transformers'][1]:.3f}; "
              f"steps {reached['ours'][0]} / {reached['transformers'][0]}")
    elif "ours" in reached:
        print(f"time to {args.target}: ours/transformers < {reached['ours'][1] / seconds['transformers']:.3f} "
              f"(transformers had not reached it when it stopped)")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in curves.items():
        steps, secs, accs = zip(*points)
        axes[0].plot(steps, accs, marker=".", label=name)
        axes[1].plot(secs, accs, marker=".", label=name)
    for axis, label in zip(axes, ("steps", f"training seconds ({args.device}, load {load()})")):
        axis.axhline(args.target, color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel(label)
        axis.set_ylabel("eval MLM accuracy")
        axis.legend()
    figure.suptitle(f"time to eval MLM accuracy {args.target}: --config {args.config} vs transformers' BertForMaskedLM")
    figure.tight_layout()
    figure.savefig(args.plot, dpi=100)
    print(f"wrote {args.plot}")


def main() -> None:
    args = parse_args()
    if args.device == "cpu" and not args.default_malloc:
        from bert_jax import backend

        backend.reexec_with_tuned_malloc()
    os.environ.setdefault("JAX_PLATFORMS", JAX_PLATFORMS[args.device])
    if not os.path.exists(args.corpus):
        raise SystemExit(f"--corpus {args.corpus}: not found (../shared/data, or pass your own text)")
    os.makedirs(args.work, exist_ok=True)
    if args.mode == "fidelity":
        fidelity(args)
    else:
        target(args)


if __name__ == "__main__":
    main()
