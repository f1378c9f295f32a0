"""Where the train step's time goes: a `jax.profiler` trace of a few steps, summed per XLA op.

    python benchmarks/profile_step.py [--config mini] [--steps 3] [--top 15]

(On GPU/TPU: `python benchmarks/train_step.py --device gpu --profile`, which uses the same
tables: there the sums are of the device's kernels, per XLA op or fusion.)

Traces `--steps` steps of the benchmark config (after warm-up) into a temporary directory, reads
the trace back with `jax.profiler.ProfileData`, and prints the ops that took the most time per
step (summed over XLA's worker and client threads), then the shares of matrix multiplies (dot /
YNNPACK fusions), layout copies and everything else. Eigen matmuls (what CPU train steps compile
to, see bert_jax/backend.py) run without trace annotations, so their time is missing from the
sums. Open the trace directory in TensorBoard's profile plugin or Perfetto for the timeline.
"""

from __future__ import annotations

import argparse
import collections
import glob
import tempfile

import jax
from jax.profiler import ProfileData
from train_step import CONFIGS, _median_seconds, make_batch, our_step

from bert_jax import backend


def op_seconds(trace_dir: str, device: str = "cpu") -> collections.Counter:
    """Seconds per XLA op name in the trace. CPU: over XLA's threads of the host trace, the
    worker pool and the client threads, which run part of the ops themselves (executor wrappers
    excluded). GPU/TPU: the device planes' 'XLA Ops' lines where the profiler writes them, else
    their kernel streams."""
    path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
    totals: collections.Counter = collections.Counter()
    for plane in ProfileData.from_file(path).planes:
        if device == "cpu":
            lines = [line for line in plane.lines if line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient"))]
        elif plane.name.startswith(("/device:GPU", "/device:TPU")):
            lines = [line for line in plane.lines if line.name == "XLA Ops"] or [
                line for line in plane.lines if line.name.startswith("Stream")]
        else:
            continue
        for line in lines:
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "end: ")):
                    totals[event.name] += event.duration_ns / 1e9
    return totals


def traced_op_seconds(step, device: str, steps: int) -> collections.Counter:
    """`op_seconds` of `steps` calls of `step` (already warm) traced into a temporary directory."""
    trace_dir = tempfile.mkdtemp(prefix="bert-jax-trace-")
    with jax.profiler.trace(trace_dir):
        for _ in range(steps):
            step()
    print(f"trace in {trace_dir}", flush=True)
    return op_seconds(trace_dir, device)


def print_op_table(title: str, totals: collections.Counter, steps: int, top: int) -> None:
    """The `top` ops by time per step with their shares, then the shares per kind of op."""
    busy = sum(totals.values()) or 1e-12
    print(f"\n{title}: {1e3 * busy / steps:.1f} ms of ops per step")
    print("| op | ms per step | share |\n|---|---:|---:|")
    for op, total in totals.most_common(top):
        print(f"| {op} | {1e3 * total / steps:.1f} | {total / busy:.1%} |")
    shares = collections.Counter()
    for op, total in totals.items():
        shares[category(op)] += total
    print("\n| kind | share of op time |\n|---|---:|")
    for kind, total in shares.most_common():
        print(f"| {kind} | {total / busy:.1%} |", flush=True)


def category(op: str) -> str:
    if op.startswith(("ynn_fusion", "xnn_fusion", "dot", "onednn", "cublas", "gemm", "convolution")) or "gemm" in op:
        return "matrix multiplies"
    if "scatter" in op:
        return "scatters"
    if "copy" in op or "transpose" in op:
        return "layout copies"
    return "elementwise, reductions, rest"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mini", choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    backend.reexec_with_tuned_malloc()
    layers, hidden, batch_size, _ = CONFIGS[args.config]
    step, _ = our_step(layers, hidden, make_batch(batch_size))
    seconds = _median_seconds(step, 2, 2)
    totals = traced_op_seconds(step, "cpu", args.steps)
    print(f"{args.config}: {seconds:.3f} s/step wall")
    print_op_table(f"{args.config}, thread-seconds of XLA ops (all threads)", totals, args.steps, args.top)

if __name__ == "__main__":
    main()
