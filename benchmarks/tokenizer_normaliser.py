"""What the shared normaliser costs our SentencePiece encoder, and its agreement with tokenizer.json.

    python benchmarks/tokenizer_normaliser.py [--corpus ../shared/data/kowiki_docs_5MB.txt] [--sentences 60000]

An 8k unigram tokenizer is trained on the corpus in a temporary directory; then the corpus
sentences are encoded 7 times each way (`encode_batch`, SentencePiece alone), interleaved, and the
median times compared. Also printed: the share of sentences that skip the normaliser (already in
normal form), and how many sentences get other ids from tokenizer.json (special strings as text).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import tokenizers

from bert_jax.data import normalization, tokenizer_training
from bert_jax.data.corpus import CorpusStats, read_documents

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CORPUS = os.path.join(HERE, "..", "..", "shared", "data", "kowiki_docs_5MB.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--sentences", type=int, default=60000)
    args = parser.parse_args()
    sentences = [s for d in read_documents([args.corpus], CorpusStats()) for s in d][:args.sentences]
    with tempfile.TemporaryDirectory() as work:
        tok = tokenizer_training.train([args.corpus], os.path.join(work, "tok"), vocab_size=8000, input_sentence_size=100_000)
        exported = tokenizers.Tokenizer.from_file(os.path.join(work, "tok", "tokenizer.json"))
        exported.encode_special_tokens = True
        differ = sum(a != b.ids for a, b in zip(tok.encode_batch(sentences),
                                                exported.encode_batch(sentences, add_special_tokens=False)))
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
          f"({statistics.median(ours) / statistics.median(alone):.2f}x); other ids from tokenizer.json: {differ}")


if __name__ == "__main__":
    main()
