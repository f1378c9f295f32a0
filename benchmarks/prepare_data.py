"""prepare-data throughput and peak memory against a straightforward single-process reference.

    python benchmarks/prepare_data.py [--corpus ../shared/data/kowiki_docs_5MB.txt] [--workers 2]

Both sides use the same SentencePiece unigram tokenizer (the project's default) and the same
NSP instance algorithm. The reference is written the plain way: one process reads the corpus,
tokenizes it line by line from Python, builds instances with Python lists and writes JSON lines.
Peak RSS is the peak of the summed resident memory of the whole process tree (main + workers),
for the corpus and for the corpus repeated 10 times. The runs are repeated `--rounds` times,
interleaved, and seconds are medians (this machine is shared and drifts).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CORPUS = os.path.join(HERE, "..", "..", "shared", "data", "kowiki_docs_5MB.txt")


def run_measured(command: list[str]) -> tuple[float, float]:
    """Runs `command`; returns (seconds, peak summed RSS of its process tree in MiB)."""
    start = time.time()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    root = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    if process.returncode:
        raise SystemExit(f"{command} failed with exit code {process.returncode}")
    return time.time() - start, peak / 2**20


# ---- the reference: the classic algorithm, written plainly ---------------------------------

def reference(corpus: str, tokenizer_dir: str, output: str, max_seq_length: int = 128,
              seed: int = 12345) -> int:
    """Reads all documents, tokenizes line by line, builds NSP instances, writes JSON lines."""
    import sentencepiece

    encode = sentencepiece.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "spm.model")).encode
    documents, current = [], []
    for line in open(corpus, encoding="utf-8"):
        line = line.strip()
        if not line:
            if current:
                documents.append(current)
            current = []
        else:
            tokens = encode(line)
            if tokens:
                current.append(tokens)
    if current:
        documents.append(current)
    rng = random.Random(seed)
    count = 0
    max_tokens = max_seq_length - 3
    with open(output, "w") as out:
        for d, document in enumerate(documents):
            chunk, length, i = [], 0, 0
            while i < len(document):
                chunk.append(document[i])
                length += len(document[i])
                if i == len(document) - 1 or length >= max_tokens:
                    a_end = 1 if len(chunk) < 2 else rng.randint(1, len(chunk) - 1)
                    a = [t for s in chunk[:a_end] for t in s]
                    if len(chunk) == 1 or rng.random() < 0.5:
                        other = documents[(d + 1 + rng.randrange(len(documents) - 1)) % len(documents)]
                        b = [t for s in other[rng.randrange(len(other)):] for t in s][:max_tokens - len(a)]
                        label, i = 1, i - (len(chunk) - a_end)
                    else:
                        b, label = [t for s in chunk[a_end:] for t in s], 0
                    while len(a) + len(b) > max_tokens:
                        longer = a if len(a) > len(b) else b
                        longer.pop(0) if rng.random() < 0.5 else longer.pop()
                    if a and b:
                        ids = [2] + a + [3] + b + [3]
                        out.write(json.dumps({"input_ids": ids,
                                              "segment_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                                              "next_sentence_label": label}) + "\n")
                        count += 1
                    chunk, length = [], 0
                i += 1
    return count


def _prepare_command(corpus: str, tokenizer_dir: str, workers: int) -> list[str]:
    return ["bert-jax", "prepare-data", "--input", corpus, "--tokenizer", tokenizer_dir, "--workers", str(workers),
            "--quiet", "--eval-fraction", "0"]


def _count_examples(output: str) -> int:
    """Examples written by prepare-data (metadata.json) or by the reference (JSON lines)."""
    if os.path.isdir(output):
        return json.load(open(os.path.join(output, "metadata.json")))["splits"]["train"]["examples"]
    return sum(1 for _ in open(output))


def tokenizing_floor(corpus: str, tokenizer_dir: str, threads: int) -> tuple[float, float]:
    """Seconds SentencePiece needs for every line of `corpus`: one call per line, and batched."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "spm.model"))
    lines = [line.strip() for line in open(corpus, encoding="utf-8") if line.strip()]
    start = time.perf_counter()
    for line in lines:
        processor.encode(line)
    middle = time.perf_counter()
    processor.encode(lines, num_threads=threads)
    return middle - start, time.perf_counter() - middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=16000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; seconds are medians")
    parser.add_argument("--reference-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_only:  # child process of the measured reference run
        reference(args.corpus, args.tokenizer, args.output)
        return
    if not os.path.exists(args.corpus):
        raise SystemExit(f"--corpus {args.corpus}: not found (the shared Korean Wikipedia file)")
    work = tempfile.mkdtemp(prefix="bench-prepare-")
    tok = os.path.join(work, "tok")
    subprocess.run(["bert-jax", "train-tokenizer", "--input", args.corpus, "--output", tok,
                    "--vocab-size", str(args.vocab_size), "--model-type", "unigram"],
                   check=True, stdout=subprocess.DEVNULL)
    big = os.path.join(work, "corpus_x10.txt")
    with open(big, "w", encoding="utf-8") as f:
        text = open(args.corpus, encoding="utf-8").read().rstrip("\n") + "\n\n"
        f.write(text * 10)
    runs = [(f"bert-jax prepare-data, {workers} worker(s), corpus {name}", _prepare_command(corpus, tok, workers))
            for workers, name, corpus in ((args.workers, "1x", args.corpus), (args.workers, "10x", big),
                                          (1, "1x", args.corpus))]
    runs.append(("reference, 1 process, corpus 1x", [sys.executable, __file__, "--reference-only", "--corpus",
                                                      args.corpus, "--tokenizer", tok]))
    measured = {name: [] for name, _ in runs}
    for round_index in range(args.rounds):  # rounds interleave the runs: all see the same machine
        for name, command in runs:
            out = os.path.join(work, f"out_{len(measured[name])}_{abs(hash(name))}")
            measured[name].append(run_measured(command + ["--output", out]) + (_count_examples(out),))
    rows = [(name, values[0][2], statistics.median(v[0] for v in values), max(v[1] for v in values))
            for name, values in measured.items()]
    reference_rate = rows[-1][1] / rows[-1][2]
    line_by_line, batched = tokenizing_floor(args.corpus, tok, args.workers)
    print("| run | examples | seconds | examples/s | peak RSS (MiB) | throughput / reference |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, examples, seconds, rss in rows:
        rate = examples / seconds
        print(f"| {name} | {examples} | {seconds:.1f} | {rate:,.0f} | {rss:,.0f} | {rate / reference_rate:.2f}x |")
    print(f"\nSentencePiece alone on the 1x corpus: {line_by_line:.2f} s line by line (the reference's "
          f"tokenizing), {batched:.2f} s batched on {args.workers} threads. Any program with this tokenizer "
          f"on {args.workers} cores needs at least the batched time, so its ratio to the reference is at most "
          f"{rows[-1][2] / batched:.1f}x here (reference seconds / batched seconds, start-up ignored).")


if __name__ == "__main__":
    main()
