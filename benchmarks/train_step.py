"""Our full train step against Hugging Face `transformers` BertForPreTraining (PyTorch), side by side.

    python benchmarks/train_step.py [--configs mini base] [--steps 10]

Both run forward, backward and an AdamW update on the same batch (random ids, 15% of positions
masked with the 80/10/10 rule, NSP labels), same sequence length, batch and threads (all cores).
After warm-up (our compile included in warm-up only) the two steps alternate, ours then theirs,
`--steps` times, so that both see the same machine; times are medians, and the ratio is the
median of the per-pair ratios (shared machines drift by tens of percent between minutes).
MFU is our analytic model FLOPs per step (MLM head at the masked positions) over a float32
matmul peak measured in the same run. Like `bert-jax pretrain`, the benchmark re-executes itself
with tuned glibc malloc settings (`bert_jax/cpu_tuning.py`), which then apply to both steps;
`--default-malloc` keeps glibc's defaults.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import cpu_tuning, flops
from bert_jax.default_config import bert_config
from bert_jax.masking import MaskingConfig, mask_batch
from bert_jax.sharding import global_batch
from bert_jax.train import setup

CONFIGS = {  # name: (layers, hidden, batch)
    "mini": (4, 256, 32),
    "base": (12, 768, 32),
}
VOCAB, SEQ, PREDICTIONS = 32000, 128, 20


def make_batch(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids, the masking rule applied, NSP labels; full padding-free sequences."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, (batch, SEQ)).astype(np.int32)
    ids[:, 0], ids[:, SEQ // 2], ids[:, -1] = 2, 3, 3
    masked = mask_batch(ids, np.ones_like(ids, bool), np.ones_like(ids, bool), rng,
                        MaskingConfig(0.15, PREDICTIONS, VOCAB, 4, (0, 1, 2, 3, 4)))
    segments = (np.arange(SEQ)[None, :] > SEQ // 2).astype(np.int32).repeat(batch, 0)
    return {"input_ids": masked["input_ids"], "input_mask": np.ones_like(ids), "segment_ids": segments,
            "masked_lm_positions": masked["masked_lm_positions"], "masked_lm_ids": masked["masked_lm_ids"],
            "masked_lm_weights": masked["masked_lm_weights"],
            "next_sentence_labels": rng.integers(0, 2, batch).astype(np.int32),
            "example_weights": np.ones(batch, np.float32)}


def _median_seconds(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    return statistics.median(_seconds(step) for _ in range(steps))


def _seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def alternate(ours, theirs, warmup: int, steps: int) -> tuple[float, float, float]:
    """Median seconds of each step and the median of per-pair ratios theirs / ours, with the two
    steps run alternately."""
    for _ in range(warmup):
        ours()
        theirs()
    pairs = [(_seconds(ours), _seconds(theirs)) for _ in range(steps)]
    return (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs),
            statistics.median(b / a for a, b in pairs))


def our_step(layers: int, hidden: int, batch: dict, dtype: str = "float32"):
    """(step function that runs one jitted train step to completion, the compiled Run)."""
    config = bert_config(num_layers=layers, hidden_size=hidden, vocab_size=VOCAB, dtype=dtype,
                         hidden_dropout=0.1, attention_dropout=0.0)
    config.data.update(max_seq_length=SEQ, max_predictions_per_seq=PREDICTIONS)
    config.train.update(global_batch_size=len(batch["input_ids"]), num_steps=1000)
    config.optim.update(warmup_steps=10)
    metadata = {"vocab_size": VOCAB, "max_seq_length": SEQ, "max_predictions_per_seq": PREDICTIONS,
                "pair_task": "nsp"}
    run = setup(config, metadata)
    state = {"s": run.init(jax.random.PRNGKey(0))}
    device_batch = global_batch(batch, run.mesh)
    rng = jax.random.PRNGKey(1)

    def step():
        state["s"], _ = run.train_step(state["s"], device_batch, rng)
        jax.block_until_ready(state["s"].step)

    return step, run


def time_ours(layers: int, hidden: int, batch: dict, steps: int, dtype: str = "float32") -> tuple[float, object]:
    """Median seconds of our step alone, and the compiled Run."""
    step, run = our_step(layers, hidden, batch, dtype)
    return _median_seconds(step, 3, steps), run


def reference_step(layers: int, hidden: int, batch: dict):
    """A step function of transformers' BertForPreTraining with torch.optim.AdamW on `batch`."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=hidden // 64, intermediate_size=4 * hidden,
                                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0)
    model = transformers.BertForPreTraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    labels = np.full((len(batch["input_ids"]), SEQ), -100, np.int64)
    rows = np.arange(len(labels))[:, None]
    weights = batch["masked_lm_weights"] > 0
    labels[np.broadcast_to(rows, weights.shape)[weights], batch["masked_lm_positions"][weights]] = \
        batch["masked_lm_ids"][weights]
    inputs = {"input_ids": torch.tensor(batch["input_ids"]).long(),
              "attention_mask": torch.tensor(batch["input_mask"]).long(),
              "token_type_ids": torch.tensor(batch["segment_ids"]).long(),
              "labels": torch.tensor(labels), "next_sentence_label": torch.tensor(batch["next_sentence_labels"]).long()}

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        optimizer.step()

    return step


def measured_matmul_peak(size: int = 4096, repeats: int = 10) -> float:
    """FLOP/s of a large float32 matmul through JAX on this machine: the faster of XLA:CPU's
    default (YNNPACK) and the Eigen path that our steps compile with."""
    a = jnp.ones((size, size), jnp.float32)
    rates = []
    for options in (None, cpu_tuning.compiler_options(jax.sharding.Mesh(jax.devices()[:1], ("d",)))):
        matmul = jax.jit(lambda x: x @ x, compiler_options=options)
        rates.append(2 * size**3 / _median_seconds(lambda: matmul(a).block_until_ready(), 2, repeats))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, help="override the batch size of every config")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default malloc settings (bert-jax training commands tune them)")
    args = parser.parse_args()
    if not args.default_malloc:
        cpu_tuning.reexec_with_tuned_malloc()
    peak = measured_matmul_peak()
    print(f"devices: {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} CPU threads; "
          f"measured float32 matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset: glibc defaults)')} for both")
    print("| config | batch x seq | ours s/step | ours tokens/s | HF PyTorch s/step | HF tokens/s | ours / HF | "
          "analytic GFLOP/step | ours MFU vs measured peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.configs:
        layers, hidden, batch_size = CONFIGS[name]
        batch = make_batch(args.batch or batch_size)
        step, run = our_step(layers, hidden, batch)
        ours, reference, ratio = alternate(step, reference_step(layers, hidden, batch), 2, args.steps)
        tokens = len(batch["input_ids"]) * SEQ
        step_flops = len(batch["input_ids"]) * flops.train_flops_per_sequence(run.model, SEQ, PREDICTIONS)
        print(f"| {name} (L{layers}/H{hidden}, vocab {VOCAB}) | {len(batch['input_ids'])} x {SEQ} | {ours:.3f} | "
              f"{tokens / ours:,.0f} | {reference:.3f} | {tokens / reference:,.0f} | {ratio:.2f}x | "
              f"{step_flops / 1e9:.1f} | {step_flops / ours / peak:.0%} |", flush=True)


if __name__ == "__main__":
    main()
