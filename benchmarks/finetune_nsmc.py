"""Korean sentiment (NSMC-style) accuracy after pretraining on Korean Wikipedia, against the same
model from random initialisation, side by side.

    python benchmarks/finetune_nsmc.py [--pretrain-steps 1200] [--epochs 2]

Uses ../shared/data/kowiki_docs_5MB.txt (pretraining) and nsmc_like_small_{train,test}.tsv
(20,000 / 5,000 reviews). The model is the demo config (bert_jax/config/presets/demo.py, L2/H128) with an 8,000-token unigram
tokenizer; pretraining runs `--pretrain-steps` steps of 32 x 128 on this CPU (its wall time is the
budget reported); both runs then fine-tune with the same settings.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")


def main() -> None:
    from bert_jax.config.defaults import demo_config, finetune_config
    from bert_jax.data import tokenizer_training
    from bert_jax.data.pretraining_data import DataSettings, prepare_data
    from bert_jax.tasks.classification import finetune
    from bert_jax.tasks.pretraining import train_and_evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    corpus = os.path.join(SHARED, "kowiki_docs_5MB.txt")
    train, test = (os.path.join(SHARED, f"nsmc_like_small_{s}.tsv") for s in ("train", "test"))
    for path in (corpus, train, test):
        if not os.path.exists(path):
            raise SystemExit(f"{path}: not found (../shared/data)")
    work = tempfile.mkdtemp(prefix="bench-nsmc-")
    tokenizer_training.train([corpus], f"{work}/tok", vocab_size=8000)
    prepare_data([corpus], f"{work}/tok", f"{work}/data", DataSettings(eval_fraction=0.02), workers=2, progress=False)
    config = demo_config()
    config.train.update(num_steps=args.pretrain_steps, eval_every=0, log_every=100)
    config.optim.warmup_steps = args.pretrain_steps // 10
    start = time.time()
    pretrain_metrics = train_and_evaluate(config, f"{work}/data", f"{work}/pretrained")
    budget = time.time() - start
    rows = []
    for name, scratch in (("pretrained on Korean Wikipedia", False), ("random initialisation", True)):
        settings = finetune_config()
        settings.train.update(max_length=args.max_length, epochs=args.epochs, learning_rate=5e-4,
                              patience=args.epochs, from_scratch=scratch, log_every=200)
        result = finetune(f"{work}/pretrained", train, test, f"{work}/ft_{int(scratch)}", "document", "label",
                          config=settings)
        rows.append((name, result["best"]))
    print(f"pretraining: {args.pretrain_steps} steps of 32 x 128 in {budget / 60:.1f} min on {os.cpu_count()} CPU "
          f"cores (eval MLM accuracy {pretrain_metrics.get('eval/mlm_acc', float('nan')):.3f})")
    print("| initialisation | best epoch | NSMC-style test accuracy | macro-F1 |")
    print("|---|---:|---:|---:|")
    for name, best in rows:
        print(f"| {name} | {best['epoch']} | {best['eval_accuracy']:.4f} | {best['eval_macro_f1']:.4f} |")


if __name__ == "__main__":
    main()
