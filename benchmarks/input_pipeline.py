"""Sequences/s the tf.data pipeline delivers per host, against what the mini-like train step consumes.

    python benchmarks/input_pipeline.py [--corpus ../shared/data/kowiki_docs_5MB.txt] [--batches 300]

Real shards: the Korean Wikipedia file is tokenized (32k unigram) and prepared (NSP, sequence 128,
dynamic whole-word masking) in a temporary directory; the pipeline then streams, shuffles,
parses and masks batches of 32. The consumer side is the mini-like train step of
`benchmarks/train_step.py` (L4/H256, vocab 32000, batch 32 x 128), timed in the same run, in a
process re-executed with the malloc settings that `bert-jax pretrain` uses.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time

from bert_jax.data import input_pipeline
from bert_jax.data.pretraining_data import load_metadata
from bert_jax import backend

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CORPUS = os.path.join(HERE, "..", "..", "shared", "data", "kowiki_docs_5MB.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    backend.reexec_with_tuned_malloc()
    if not os.path.exists(args.corpus):
        raise SystemExit(f"--corpus {args.corpus}: not found (the shared Korean Wikipedia file)")
    work = tempfile.mkdtemp(prefix="bench-pipeline-")
    subprocess.run(["bert-jax", "train-tokenizer", "--input", args.corpus, "--output", f"{work}/tok",
                    "--vocab-size", "32000"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["bert-jax", "prepare-data", "--input", args.corpus, "--tokenizer", f"{work}/tok",
                    "--output", f"{work}/data", "--num-shards", "4", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    metadata = load_metadata(f"{work}/data")
    batches = input_pipeline.train_batches(f"{work}/data", metadata, args.batch_size, args.batches + 10, seed=0,
                                           mask_prob=0.15, shuffle_buffer=10_000)
    for _ in range(10):  # warm-up: file opening, first shuffle block
        next(batches)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    delivered = args.batches * args.batch_size / (time.perf_counter() - start)

    import train_step  # the mini-like step, measured here too

    step_seconds, _ = train_step.time_ours(4, 256, train_step.make_batch(args.batch_size), steps=5)
    consumed = args.batch_size / step_seconds
    print("| pipeline sequences/s (1 host, dynamic masking) | mini-like train step sequences/s | ratio |")
    print("|---:|---:|---:|")
    print(f"| {delivered:,.0f} | {consumed:,.1f} | {delivered / consumed:,.0f}x |")


if __name__ == "__main__":
    main()
