"""Does pretraining pay off downstream? Korean sentiment (NSMC-style) accuracy after pretraining on
Korean Wikipedia, on unlabelled in-domain reviews, on both, against random initialisation and a
TF-IDF + logistic-regression baseline, all on the same split.

    pip install -e ".[bench]"     # scikit-learn for the baseline
    python benchmarks/finetune_nsmc.py [--pretrain-steps 1000] [--config tiny_budget] [--seq 128]
        [--ft-lr 2e-4 5e-4 1e-3 2e-3] [--epochs 3] [--max-length 64] [--variants random wiki reviews both tfidf]
    # the README's 30-minute run: --pretrain-steps 6000 --seq 64 --epochs 3 --max-length 64 --work DIR

Data (../shared/data): kowiki_docs_5MB.txt (Wikipedia, 4.9 MB), nsmc_unlabelled_reviews.txt
(208,506 unlabelled reviews, ratings 5-8, disjoint from every labelled set) and
nsmc_like_small_{train,test}.tsv (20,000 / 5,000 labelled reviews). The 20,000 are split into
18,000 for training (the first `--train-examples` of them are used) and every tenth row, 2,000,
for validation; the epoch (and the baseline's C) is chosen on validation, and the 5,000 test
reviews are scored once with that choice.

Every model shares one SentencePiece unigram tokenizer (`--vocab` pieces) trained on both corpora.
Each pretrained variant runs `--pretrain-steps` steps of the packaged `--config` (default
tiny_budget: BERT-Tiny, pre-LN, no dropout, 40% masking, short warmup) on its corpus prepared with
`--pair-task none --pack-sequences` at `--seq` tokens; its wall time and the load average are
printed as its budget. Fine-tuning, tuned per variant as a researcher would: every `--ft-lr` x
`--max-length` pair runs `--epochs` epochs of batch 32 (10% warmup, linear decay, dropout 0.1); the
pair and epoch with the best validation accuracy are chosen, and only that model is scored on test.
A rerun with the same `--work` reuses finished pretraining (with its recorded budget) and finished
fine-tuning runs, so adding a variant or a learning rate costs only the new runs; settings that
differ from the recorded ones are refused before any work. `--variants random` without a
pretrained variant takes the architecture from 2 steps on the reviews (`pretrained_architecture`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")
CORPORA = {"wiki": ["kowiki_docs_5MB.txt"], "reviews": ["nsmc_unlabelled_reviews.txt"],
           "both": ["kowiki_docs_5MB.txt", "nsmc_unlabelled_reviews.txt"]}
NAMES = {"random": "random initialisation", "wiki": "pretrained on Korean Wikipedia (4.9 MB)",
         "reviews": "pretrained on unlabelled reviews (19 MB)", "both": "pretrained on both",
         "tfidf": "TF-IDF char 1-3-grams + logistic regression"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=list(NAMES), default=list(NAMES))
    parser.add_argument("--config", default="tiny_budget", help="packaged pretraining config")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--seq", type=int, default=128, help="pretraining sequence length")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--ft-lr", type=float, nargs="+", default=[2e-4, 5e-4, 1e-3, 2e-3],
                        help="fine-tuning peak learning rates tried per variant (chosen on validation)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-length", type=int, nargs="+", default=[64],
                        help="fine-tuning lengths in tokens tried per variant (chosen on validation)")
    parser.add_argument("--train-examples", type=int, default=18_000,
                        help="labelled reviews to fine-tune on (the first N of the 18,000; "
                             "fewer shows label efficiency)")
    parser.add_argument("--work", default=None, help="working directory (default: a new temporary one)")
    args = parser.parse_args()
    # one run per distinct value, as it is named on disk (lr 1e-3 and 0.001 are one run)
    args.ft_lr = list({f"{lr:g}": lr for lr in args.ft_lr}.values())
    args.max_length = list(dict.fromkeys(args.max_length))
    return args


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def split_labelled(work: str, train_examples: int) -> tuple[str, str, str]:
    """train (the first `train_examples` of 18,000), validation (every tenth row, 2,000) and test
    files with the header kept; the validation and test reviews do not depend on `train_examples`."""
    with open(os.path.join(SHARED, "nsmc_like_small_train.tsv"), encoding="utf-8", newline="") as f:
        header, *rows = f.read().split("\n")
    rows = [row for row in rows if row]
    train = [row for i, row in enumerate(rows) if i % 10 != 9]
    if not 0 < train_examples <= len(train):
        raise SystemExit(f"--train-examples {train_examples}: must be in 1..{len(train)}")
    paths = {}
    for name, kept in ((f"train{train_examples}", train[:train_examples]),
                       ("validation", [row for i, row in enumerate(rows) if i % 10 == 9])):
        paths[name] = os.path.join(work, f"{name}.tsv")
        with open(paths[name], "w", encoding="utf-8", newline="") as f:
            f.write("\n".join([header] + kept) + "\n")
    return paths[f"train{train_examples}"], paths["validation"], os.path.join(SHARED, "nsmc_like_small_test.tsv")


def read_table(path: str) -> tuple[list[str], list[int]]:
    from bert_jax.data.finetune_data import read_table as read

    rows = read(path, ["document"], "label").rows
    return [row["document"] for row in rows], [row["label"] for row in rows]


def tfidf_baseline(train: str, validation: str, test: str) -> dict:
    """Character 1-3-gram TF-IDF + logistic regression; C chosen on validation."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    start = time.time()
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = map(read_table, (train, validation, test))
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    features = vectorizer.fit_transform(x_train)
    fits = {c: LogisticRegression(C=c, max_iter=2000).fit(features, y_train) for c in (0.3, 1.0, 3.0, 10.0)}
    scores = {c: model.score(vectorizer.transform(x_val), y_val) for c, model in fits.items()}
    best = max(scores, key=scores.get)
    print("tfidf: validation accuracy " + ", ".join(f"C={c}: {v:.4f}" for c, v in scores.items()), flush=True)
    return {"validation": scores[best], "test": fits[best].score(vectorizer.transform(x_test), y_test),
            "choice": f"C={best}", "budget": f"{time.time() - start:.0f} s fit (4 values of C)"}


def pretrain_settings(args, steps: int) -> dict:
    """What a pretraining run's budget.json records and a reuse must match, by flag."""
    return {"config": args.config, "steps": steps, "seq": args.seq, "vocab": args.vocab}


def recorded_budget(args, work: str, name: str, steps: int) -> str | None:
    """The budget line of a finished pretraining run in `work`/pretrained_`name` with these settings;
    None when there is no run. Exits with a one-line error naming the flags for a run of other
    settings or an unfinished run (resuming it would time only the rest)."""
    out = os.path.join(work, f"pretrained_{name}")
    settings = pretrain_settings(args, steps)
    flags = {"config": "--config", "steps": "--pretrain-steps", "seq": "--seq", "vocab": "--vocab"}
    record = os.path.join(out, "budget.json")
    if os.path.exists(record):
        with open(record, encoding="utf-8") as f:
            saved = json.load(f)
        differ = [f"{flags[k]} {saved.get(k)} (not {v})" for k, v in settings.items() if saved.get(k) != v]
        if differ:
            raise SystemExit(f"{out}: pretrained with {', '.join(differ)}; use another --work")
        return saved["budget"]
    if os.path.exists(out):
        raise SystemExit(f"{out}: an unfinished pretraining run (no budget.json); remove it or use another --work")
    return None


def pretrain(args, work: str, tok: str, variant: str, steps: int, name: str = "") -> tuple[str, str]:
    """Prepares the variant's corpus, pretrains `steps` steps into `work`/pretrained_`name or variant`;
    returns (workdir, budget line). A finished run of the same settings is reused with the budget it
    recorded (`recorded_budget`)."""
    from bert_jax.config.loading import load_config
    from bert_jax.data.pretraining_data import DataSettings, prepare_data
    from bert_jax.tasks.pretraining import train_and_evaluate

    name = name or variant
    out = os.path.join(work, f"pretrained_{name}")
    budget = recorded_budget(args, work, name, steps)
    if budget:
        print(f"{name}: reusing {out}: {budget}", flush=True)
        return out, budget
    config = load_config(args.config)
    data = os.path.join(work, f"data_{variant}_len{args.seq}_mask{config.data.mask_prob:g}")
    if not os.path.exists(os.path.join(data, "metadata.json")):  # a rerun with the same --work reuses it
        prepare_data([os.path.join(SHARED, f) for f in CORPORA[variant]], tok, data, DataSettings(
            max_seq_length=args.seq, pair_task="none", pack_sequences=True, mask_prob=config.data.mask_prob),
            workers=os.cpu_count() or 1,
            progress=False)
    warmup = round(config.optim.warmup_steps / config.train.num_steps * steps)
    config.model.max_position_embeddings = max(config.model.max_position_embeddings, args.seq)
    config.data.update(max_seq_length=args.seq, max_predictions_per_seq=0)  # follow the data
    config.train.update(num_steps=steps, eval_every=max(1, steps // 4), eval_steps=20, log_every=100,
                        checkpoint_every=steps)
    config.optim.warmup_steps = warmup
    start_load, start = load(), time.time()
    metrics = train_and_evaluate(config, data, out)
    budget = (f"{steps} steps of {config.train.global_batch_size} x {args.seq} in "
              f"{(time.time() - start) / 60:.1f} min on {os.cpu_count()} CPU cores (load {start_load} -> {load()}); "
              f"eval MLM accuracy {metrics.get('eval/mlm_acc', float('nan')):.3f}")
    with open(os.path.join(out, "budget.json"), "w", encoding="utf-8") as f:
        json.dump(pretrain_settings(args, steps) | {"budget": budget}, f)
    print(f"{name}: {budget}", flush=True)
    return out, budget


def check_before_work(args, work: str, models: list[str]) -> None:
    """Every setting that would stop the run later, checked before anything is trained: the
    recorded pretraining runs, the reused tokenizer's size and the fine-tuning lengths."""
    from bert_jax.config.loading import load_config

    for variant in models:
        if variant != "random":
            recorded_budget(args, work, variant, args.pretrain_steps)
    tok = os.path.join(work, "tokenizer")
    if models and os.path.exists(os.path.join(tok, "tokenizer.json")):
        from bert_jax.data import tokenizer

        size = tokenizer.load(tok).vocab_size
        if size != args.vocab:
            raise SystemExit(f"--vocab {args.vocab}: {tok} (reused) has {size} pieces; use another --work")
    positions = max(load_config(args.config).model.max_position_embeddings, args.seq)
    if max(args.max_length) > positions:
        raise SystemExit(f"--max-length {max(args.max_length)}: exceeds the model's {positions} positions "
                         f"(the larger of --seq and --config's max_position_embeddings)")


def fine_tune_once(args, init_dir: str, out: str, variant: str, lr: float, length: int, train: str,
                   validation: str) -> dict:
    """One fine-tuning run (from scratch for 'random'); returns its best epoch on validation.
    A finished run in `out` (its result.json) is reused."""
    from bert_jax.config.defaults import finetune_config
    from bert_jax.tasks.classification import finetune

    record = os.path.join(out, "result.json")
    if os.path.exists(record):
        with open(record, encoding="utf-8") as f:
            return json.load(f)
    settings = finetune_config()
    settings.train.update(max_length=length, epochs=args.epochs, learning_rate=lr, patience=args.epochs,
                          from_scratch=variant == "random", log_every=500)
    start = time.time()
    best = finetune(init_dir, train, validation, out, "document", "label", config=settings)["best"]
    result = {"validation": best["eval_accuracy"], "epoch": best["epoch"], "lr": lr, "max_length": length,
              "minutes": (time.time() - start) / 60}
    print(f"{variant}: lr {lr:g}, max length {length}: fine-tuned in {result['minutes']:.1f} min (load {load()}); "
          f"validation {result['validation']:.4f} at epoch {result['epoch']}", flush=True)
    with open(record, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return result


def fine_tune(args, init_dir: str, work: str, variant: str, train: str, validation: str, test: str) -> dict:
    """Every `--ft-lr` x `--max-length` run; the best on validation is scored once on test."""
    from bert_jax.tasks.classification import Classifier

    runs = {}
    for lr, length in itertools.product(args.ft_lr, args.max_length):
        out = os.path.join(work, f"finetuned_{variant}_n{args.train_examples}_ep{args.epochs}_lr{lr:g}_len{length}")
        runs[out] = fine_tune_once(args, init_dir, out, variant, lr, length, train, validation)
    out, best = max(runs.items(), key=lambda item: item[1]["validation"])  # first of equals: the grid order
    texts, labels = read_table(test)
    predicted, _ = Classifier(out).predict(texts)
    accuracy = sum(int(p == y) for p, y in zip(predicted, labels)) / len(labels)
    return {"validation": best["validation"], "test": accuracy, "grid": list(runs.values()),
            "choice": f"lr {best['lr']:g}, length {best['max_length']}, epoch {best['epoch']}"}


def main() -> None:
    args = parse_args()
    from bert_jax import backend

    backend.reexec_with_tuned_malloc()  # as `bert-jax pretrain` / `finetune` on a CPU host
    for name in ("kowiki_docs_5MB.txt", "nsmc_unlabelled_reviews.txt", "nsmc_like_small_train.tsv",
                 "nsmc_like_small_test.tsv"):
        if not os.path.exists(os.path.join(SHARED, name)):
            raise SystemExit(f"{os.path.join(SHARED, name)}: not found (../shared/data)")
    work = args.work or tempfile.mkdtemp(prefix="bench-nsmc-")
    models = [v for v in args.variants if v != "tfidf"]
    check_before_work(args, work, models)
    os.makedirs(work, exist_ok=True)
    train, validation, test = split_labelled(work, args.train_examples)
    results, budgets = {}, {}
    if "tfidf" in args.variants:
        results["tfidf"] = tfidf_baseline(train, validation, test)
        budgets["tfidf"] = results["tfidf"]["budget"]
        print(f"tfidf: test {results['tfidf']['test']:.4f} ({results['tfidf']['choice']})", flush=True)
    if models:
        from bert_jax.data import tokenizer_training

        tok = os.path.join(work, "tokenizer")
        if not os.path.exists(os.path.join(tok, "tokenizer.json")):
            tokenizer_training.train([os.path.join(SHARED, f) for f in CORPORA["both"]], tok, vocab_size=args.vocab)
        pretrained = {v: pretrain(args, work, tok, v, args.pretrain_steps) for v in models if v != "random"}
        for variant in models:
            if variant == "random":  # the architecture of a pretrained variant (else 2 steps on the reviews)
                init = next(iter(pretrained.values()), None) or pretrain(args, work, tok, "reviews", 2, "architecture")
                budgets["random"] = "none"
                results["random"] = fine_tune(args, init[0], work, "random", train, validation, test)
            else:
                budgets[variant] = pretrained[variant][1]
                results[variant] = fine_tune(args, pretrained[variant][0], work, variant, train, validation, test)
    if models:
        grid = list(itertools.product(args.ft_lr, args.max_length))  # the order of each variant's runs
        print("\nvalidation accuracy of every fine-tuning run (best epoch of each):")
        print("| initialisation | " + " | ".join(f"lr {lr:g}, length {n}" for lr, n in grid) + " |")
        print("|---|" + "---:|" * len(grid))
        for variant in models:
            cells = [f"{r['validation']:.4f} (epoch {r['epoch']})" for r in results[variant]["grid"]]
            print(f"| {NAMES[variant]} | " + " | ".join(cells) + " |")
    epochs = f"{args.epochs} epoch{'s' * (args.epochs != 1)}"
    print(f"\nfine-tuning on {args.train_examples:,} labelled reviews: {epochs}, batch 32, "
          f"lr {' / '.join(f'{lr:g}' for lr in args.ft_lr)}, max length {' / '.join(map(str, args.max_length))}; "
          f"learning rate, length and epoch (C for TF-IDF) chosen on 2,000 validation reviews; "
          f"test on 5,000 once; work dir {work}")
    print("| initialisation | pretraining budget | chosen | validation accuracy | NSMC-style test accuracy |")
    print("|---|---|---|---:|---:|")
    for variant in args.variants:
        r = results[variant]
        print(f"| {NAMES[variant]} | {budgets[variant]} | {r['choice']} | {r['validation']:.4f} | {r['test']:.4f} |")


if __name__ == "__main__":
    main()
