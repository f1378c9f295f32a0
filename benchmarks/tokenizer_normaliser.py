"""What the shared normaliser costs our SentencePiece encoder: `encode_batch` against SentencePiece alone.

    python benchmarks/tokenizer_normaliser.py [--corpus ../shared/data/kowiki_docs_5MB.txt] [--sentences 60000]

An 8k unigram tokenizer is trained on the corpus in a temporary directory; then the corpus
sentences are encoded 7 times each way, interleaved, and the median times compared. The share of
sentences that skip the normaliser (already in normal form) is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from bert_jax import normalization, tokenizer
from bert_jax.corpus import CorpusStats, read_documents

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CORPUS = os.path.join(HERE, "..", "..", "shared", "data", "kowiki_docs_5MB.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--sentences", type=int, default=60000)
    args = parser.parse_args()
    sentences = [s for d in read_documents([args.corpus], CorpusStats()) for s in d][:args.sentences]
    with tempfile.TemporaryDirectory() as work:
        tok = tokenizer.train([args.corpus], os.path.join(work, "tok"), vocab_size=8000, input_sentence_size=100_000)
        alone, ours = [], []
        for _ in range(7):
            start = time.perf_counter()
            tok._spm.text.encode(sentences)
            alone.append(time.perf_counter() - start)
            start = time.perf_counter()
            tok.encode_batch(sentences)
            ours.append(time.perf_counter() - start)
    fixed = sum(map(normalization.is_fixed, sentences)) / len(sentences)
    print(f"{os.path.basename(args.corpus)}: {len(sentences)} sentences, {fixed:.1%} already normal; "
          f"SentencePiece alone {statistics.median(alone):.3f} s, encode_batch {statistics.median(ours):.3f} s "
          f"({statistics.median(ours) / statistics.median(alone):.2f}x)")


if __name__ == "__main__":
    main()
