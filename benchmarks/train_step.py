"""Our full train step against Hugging Face `transformers` BertForPreTraining (PyTorch), side by side.

    python benchmarks/train_step.py [--device cpu] [--configs mini base] [--steps 10]
    python benchmarks/train_step.py --device gpu [--configs base large] [--steps 20] [--profile]

Both run forward, backward and an AdamW update on the same batch (random ids, 15% of positions
masked with the 80/10/10 rule, NSP labels), same sequence length and batch, hidden dropout 0.1
and attention-probability dropout 0 (the fused-attention recipe; see README, Performance).
After warm-up (compiles included in warm-up only) ours and each PyTorch peer alternate,
`--steps` times, so that all see the same machine; times are medians, and each ratio is the
median of the per-pair ratios (shared machines drift by tens of percent between minutes).
MFU is our analytic model FLOPs per step (MLM head at the masked positions) over the device's
peak: on CPU a float32 matmul peak measured in the same run, on GPU/TPU the vendor's dense bf16
figure (`bert_jax.models.flops.PEAK_TFLOPS`).

--device cpu (default): all cores, float32 on both sides, PyTorch eager. Like `bert-jax pretrain`,
the benchmark re-executes itself with tuned glibc malloc settings (`bert_jax/backend.py`),
which then apply to both steps; `--default-malloc` keeps glibc's defaults.
--device gpu: our step with dtype 'auto' (bfloat16 compute, float32 parameters and AdamW state)
against `--peers` eager and torch.compile, both with bf16 autocast, SDPA attention and fused
AdamW on the same GPU. The default run (base and large, 20 steps, both peers) is sized to
finish within 8 minutes on one H100/H200, compiles included.
--device tpu: our step only (PyTorch has no TPU peer here).
--profile: after timing, a per-kernel table of one traced step of ours (jax.profiler) and of
each peer (torch.profiler).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.config.defaults import bert_config
from bert_jax.data.masking import MaskingConfig, mask_batch
from bert_jax.models import flops
from bert_jax import backend
from bert_jax.training.sharding import global_batch
from bert_jax.training.train import setup

CONFIGS = {  # name: (layers, hidden, batch on CPU, batch on GPU/TPU)
    "tiny": (2, 128, 8, 8),  # smoke runs of every code path
    "mini": (4, 256, 32, 256),
    "base": (12, 768, 32, 256),
    "large": (24, 1024, 32, 256),
}
DEFAULT_CONFIGS = {"cpu": ["mini", "base"], "gpu": ["base", "large"], "tpu": ["base", "large"]}
JAX_PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}
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


def alternate(steps_by_name: dict, warmup: int, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds of each step ({name: step function}, the first is ours), run one after
    another `steps` times, and for every other step the median of per-round ratios theirs / ours."""
    for _ in range(warmup):
        for step in steps_by_name.values():
            step()
    rounds = [{name: _seconds(step) for name, step in steps_by_name.items()} for _ in range(steps)]
    ours = next(iter(steps_by_name))
    medians = {name: statistics.median(r[name] for r in rounds) for name in steps_by_name}
    ratios = {name: statistics.median(r[name] / r[ours] for r in rounds) for name in steps_by_name if name != ours}
    return medians, ratios


def our_step(layers: int, hidden: int, batch: dict, dtype: str = "auto"):
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


def time_ours(layers: int, hidden: int, batch: dict, steps: int, dtype: str = "auto") -> tuple[float, object]:
    """Median seconds of our step alone, and the compiled Run."""
    step, run = our_step(layers, hidden, batch, dtype)
    return _median_seconds(step, 3, steps), run


def reference_step(layers: int, hidden: int, batch: dict, device: str = "cpu", compiled: bool = False):
    """A step function of transformers' BertForPreTraining with torch.optim.AdamW on `batch`.

    device 'cpu': float32, all threads. 'gpu': bf16 autocast, SDPA attention, fused AdamW, and a
    CUDA synchronisation at the end of each step. `compiled` wraps the model in torch.compile."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    on_gpu = device == "gpu"
    target = torch.device("cuda" if on_gpu else "cpu")
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=hidden // 64, intermediate_size=4 * hidden,
                                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0,
                                     attn_implementation="sdpa")
    model = transformers.BertForPreTraining(config).to(target).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=on_gpu or None)
    forward = torch.compile(model) if compiled else model
    labels = np.full((len(batch["input_ids"]), SEQ), -100, np.int64)
    rows = np.arange(len(labels))[:, None]
    weights = batch["masked_lm_weights"] > 0
    labels[np.broadcast_to(rows, weights.shape)[weights], batch["masked_lm_positions"][weights]] = \
        batch["masked_lm_ids"][weights]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["input_mask"],
              "token_type_ids": batch["segment_ids"], "labels": labels,
              "next_sentence_label": batch["next_sentence_labels"]}
    inputs = {k: torch.tensor(np.asarray(v, np.int64), device=target) for k, v in inputs.items()}

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(target.type, dtype=torch.bfloat16, enabled=on_gpu):
            loss = forward(**inputs).loss
        loss.backward()
        optimizer.step()
        if on_gpu:
            torch.cuda.synchronize()

    return step


def measured_matmul_peak(size: int = 4096, repeats: int = 10) -> float:
    """FLOP/s of a large float32 matmul through JAX on this machine: the faster of XLA:CPU's
    default (YNNPACK) and the Eigen path that our steps compile with."""
    a = jnp.ones((size, size), jnp.float32)
    rates = []
    for options in (None, backend.compiler_options(jax.sharding.Mesh(jax.devices()[:1], ("d",)))):
        matmul = jax.jit(lambda x: x @ x, compiler_options=options)
        rates.append(2 * size**3 / _median_seconds(lambda: matmul(a).block_until_ready(), 2, repeats))
    return max(rates)


def device_peak(device: str) -> tuple[float, str]:
    """(peak FLOP/s of one device, how it was obtained)."""
    if device == "cpu":
        return measured_matmul_peak(), "measured float32 matmul peak"
    kind = jax.devices()[0].device_kind
    tflops = flops.peak_tflops(kind)
    if tflops is None:
        raise SystemExit(f"train_step.py: no peak TFLOP/s known for device kind {kind!r} (bert_jax/models/flops.py)")
    return tflops * 1e12, f"vendor dense bf16 peak of {kind}"


def profile(name: str, step, device: str, top: int) -> None:
    """Prints the kernels of one traced step: jax.profiler for ours, torch.profiler for peers."""
    if name == "ours":
        from profile_step import print_op_table, traced_op_seconds

        print_op_table(f"ours, {device}", traced_op_seconds(step, device, 1), 1, top)
        return
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "gpu":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        step()
    sort = "self_cuda_time_total" if device == "gpu" else "self_cpu_time_total"
    print(f"\n{name}, {device}: one step\n" + prof.key_averages().table(sort_by=sort, row_limit=top), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=list(JAX_PLATFORMS), default="cpu")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="default: mini base on CPU, "
                        "base large on GPU/TPU")
    parser.add_argument("--peers", default=None, help="comma-separated PyTorch peers: eager, compile "
                        "(default: eager on CPU, eager,compile on GPU, none on TPU)")
    parser.add_argument("--steps", type=int, help="timed rounds (default 10 on CPU, 20 on GPU/TPU)")
    parser.add_argument("--batch", type=int, help="override the batch size of every config")
    parser.add_argument("--profile", action="store_true", help="per-kernel table of one step of each")
    parser.add_argument("--top", type=int, default=15, help="rows of each --profile table")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default malloc settings (bert-jax training commands tune them)")
    args = parser.parse_args()
    device = args.device
    peers = (args.peers if args.peers is not None else {"cpu": "eager", "gpu": "eager,compile", "tpu": ""}[device])
    peers = [p for p in peers.split(",") if p]
    if device == "tpu" and peers or any(p not in ("eager", "compile") for p in peers):
        parser.error(f"--peers {args.peers}: choose from eager, compile (none on TPU)")
    steps = args.steps or (10 if device == "cpu" else 20)
    if device == "cpu" and not args.default_malloc:
        backend.reexec_with_tuned_malloc()
    if device == "gpu":  # JAX would take 75% of the GPU up front and starve the PyTorch peers
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    jax.config.update("jax_platforms", JAX_PLATFORMS[device])
    peak, peak_source = device_peak(device)
    print(f"devices: {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} CPU threads; "
          f"{peak_source} {peak / 1e12:.2f} TFLOP/s; peers: {', '.join(peers) or 'none'}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset: glibc defaults)')}")
    print("| config | batch x seq | step | ms/step | tokens/s | MFU | ours / step (tokens/s ratio) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name in args.configs or DEFAULT_CONFIGS[device]:
        layers, hidden, cpu_batch, accelerator_batch = CONFIGS[name]
        batch = make_batch(args.batch or (cpu_batch if device == "cpu" else accelerator_batch))
        step, run = our_step(layers, hidden, batch)
        steps_by_name = {"ours": step} | {
            f"HF {peer}": reference_step(layers, hidden, batch, device, compiled=peer == "compile") for peer in peers}
        medians, ratios = alternate(steps_by_name, 2, steps)
        tokens = len(batch["input_ids"]) * SEQ
        step_flops = len(batch["input_ids"]) * flops.train_flops_per_sequence(run.model, SEQ, PREDICTIONS)
        label = f"{name} (L{layers}/H{hidden}, {jnp.dtype(run.model.compute_dtype).name})"
        for step_name, seconds in medians.items():
            ratio = f"{ratios[step_name]:.2f}x" if step_name in ratios else ""
            print(f"| {label} | {len(batch['input_ids'])} x {SEQ} | {step_name} | {1e3 * seconds:.1f} | "
                  f"{tokens / seconds:,.0f} | {step_flops / seconds / peak:.1%} | {ratio} |", flush=True)
        if args.profile:
            for step_name, step_fn in steps_by_name.items():
                profile(step_name, step_fn, device, args.top)


if __name__ == "__main__":
    main()
