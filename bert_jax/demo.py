"""`bert-jax demo`: the whole workflow on built-in Korean text, in a few minutes on a CPU.

Corpus: the Korean constitution and ten National Assembly bills that the `konlpy` package ships
as data files (read directly; no JVM). Steps: train a tokenizer, prepare shards, pretrain the
demo config, evaluate, fill masks, draw curves.png. Re-running reuses what is already done.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
from collections.abc import Sequence

from bert_jax.data import corpus as corpus_lib

FILL_MASK_EXAMPLES = (
    "대한민국의 주권은 [MASK]에게 있고, 모든 권력은 국민으로부터 나온다.",
    "모든 국민은 법 앞에 [MASK]하다.",
    "국회는 국민의 보통·평등·직접·비밀선거에 의하여 선출된 [MASK]으로 구성한다.",
)
_CHAPTER = re.compile(r"^\s*제\d+장")


def konlpy_corpus_files() -> list[str]:
    """The text files under konlpy/data/corpus (constitution first, then the bills)."""
    spec = importlib.util.find_spec("konlpy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo corpus ships with the konlpy package: pip install 'bert_jax[demo]' "
                                "(or pass --corpus PATH)")
    root = os.path.join(list(spec.submodule_search_locations)[0], "data", "corpus")
    files = sorted(glob.glob(os.path.join(root, "kolaw", "*.txt"))) + sorted(glob.glob(os.path.join(root, "kobill", "*.txt")))
    if not files:
        raise FileNotFoundError(f"no corpus files under {root}")
    return files


def write_demo_corpus(path: str) -> int:
    """Writes the konlpy texts as documents (constitution chapters, bills) of one sentence per
    line; hard-wrapped lines are joined first. Returns the number of documents."""
    documents = []
    for file in konlpy_corpus_files():
        current: list[str] = []
        with open(file, encoding="utf-8") as f:
            for line in f:
                if _CHAPTER.match(line) and current:
                    documents.append(" ".join(current))
                    current = []
                if line.strip():
                    current.append(line.strip())
        if current:
            documents.append(" ".join(current))
    with open(path, "w", encoding="utf-8") as f:
        for document in documents:
            f.write("\n".join(corpus_lib.split_sentences(document, 2000)) + "\n\n")
    return len(documents)


def run_demo(workdir: str, corpus: str | None = None, num_steps: int | None = None,
             vocab_size: int = 2000, overrides: Sequence[str] = ()) -> dict:
    """Runs tokenizer training, data preparation, pretraining, evaluation and fill-mask in `workdir`
    (a local directory; relative paths are taken from the current directory). `num_steps` replaces
    the demo config's step count and caps its warmup at a tenth of it; `overrides` (`--config.a.b=value`
    tokens, `bert_jax.config.loading.apply_overrides`) are applied to the demo config after that.
    Bad overrides are a ValueError before anything is written."""
    from bert_jax.config.defaults import demo_config
    from bert_jax.config.loading import apply_overrides

    config = demo_config()
    if num_steps:
        config.train.num_steps = num_steps
        config.optim.warmup_steps = min(config.optim.warmup_steps, num_steps // 10)
    apply_overrides(config, overrides)  # before JAX and TensorFlow load: errors come at once
    from bert_jax import fs
    from bert_jax.data import tokenizer_training
    from bert_jax.data.pretraining_data import METADATA_FILE, DataSettings, prepare_data
    from bert_jax.inference import fill_mask, pretrained
    from bert_jax.training.train import train_and_evaluate

    workdir, corpus = fs.absolute(workdir), fs.absolute(corpus)
    os.makedirs(workdir, exist_ok=True)
    if corpus is None:
        corpus = os.path.join(workdir, "corpus.txt")
        if not os.path.exists(corpus):
            print(f"[1/5] corpus: {write_demo_corpus(corpus)} documents from konlpy -> {corpus}")
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    if not os.path.exists(os.path.join(tokenizer_dir, "tokenizer.json")):
        tok = tokenizer_training.train([corpus], tokenizer_dir, vocab_size=vocab_size, model_type="unigram")
        print(f"[2/5] tokenizer: unigram, {tok.vocab_size} tokens -> {tokenizer_dir}")
    data_dir = os.path.join(workdir, "data")
    if not os.path.exists(os.path.join(data_dir, METADATA_FILE)):
        metadata = prepare_data([corpus], tokenizer_dir, data_dir, DataSettings(
            max_seq_length=config.data.max_seq_length, dupe_factor=5, eval_fraction=0.1,
            max_predictions_per_seq=config.data.max_predictions_per_seq, num_shards=2, docs_per_chunk=8),
            workers=min(2, os.cpu_count() or 1), progress=False)
        print(f"[3/5] data: {metadata['splits']['train']['examples']} train / "
              f"{metadata['splits']['eval']['examples']} eval examples -> {data_dir}")
    model_dir = os.path.join(workdir, "model")
    print(f"[4/5] pretraining {config.train.num_steps} steps -> {model_dir}")
    # Re-running the demo with another --steps continues the same run to the new length.
    metrics = train_and_evaluate(config, data_dir, model_dir,
                                 allow_changes=("train.num_steps", "optim.warmup_steps"))
    model = pretrained.load(model_dir)
    print("[5/5] fill-mask:")
    for text, masks in zip(FILL_MASK_EXAMPLES, fill_mask.fill_mask(model, list(FILL_MASK_EXAMPLES))):
        print(f"  {text}")
        for candidate in masks[0]:
            print(f"    {candidate['score']:.3f}  {candidate['token_str']}")
    summary = {k: round(v, 4) for k, v in metrics.items() if k.startswith(("eval/", "train/mlm", "train/nsp"))}
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    print(f"curves: {os.path.join(model_dir, 'curves.png')}")
    return metrics
