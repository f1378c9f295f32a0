"""The `bert-jax` command line: parses arguments, then calls library functions."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

TRAINING_COMMANDS = ("pretrain", "evaluate", "finetune", "demo")  # re-executed with tuned malloc


def _train_tokenizer(args) -> None:
    from bert_jax.data import tokenizer_training

    tok = tokenizer_training.train(args.input, args.output, vocab_size=args.vocab_size,
                          model_type=args.model_type, character_coverage=args.character_coverage,
                          input_sentence_size=args.input_sentence_size, lowercase=args.lowercase,
                          seed=args.seed, progress=True)
    print(f"wrote {args.output}: {tok.model_type} tokenizer, {tok.vocab_size} tokens, "
          f"fingerprint {tok.fingerprint}")


def _prepare_data(args) -> None:
    from bert_jax.data.pretraining_data import DataSettings, prepare_data

    settings = DataSettings(
        max_seq_length=args.max_seq_length, pair_task=args.pair_task, pack_sequences=args.pack_sequences,
        short_seq_prob=args.short_seq_prob,
        masking=args.masking, dupe_factor=args.dupe_factor, mask_prob=args.mask_prob,
        max_predictions_per_seq=args.max_predictions_per_seq, eval_fraction=args.eval_fraction,
        num_shards=args.num_shards, seed=args.seed, docs_per_chunk=args.docs_per_chunk,
        chunk_chars=args.chunk_chars,
        text_field=args.text_field)
    metadata = prepare_data(args.input, args.tokenizer, args.output, settings, workers=args.workers,
                            progress=not args.quiet)
    summary = metadata["summary"]
    print(json.dumps({"output": args.output,
                      "train_examples": metadata["splits"]["train"]["examples"],
                      "eval_examples": metadata["splits"]["eval"]["examples"]} | summary,
                     ensure_ascii=False, indent=1))


def _add_tokenizer_parser(subparsers) -> None:
    p = subparsers.add_parser("train-tokenizer", help="train a SentencePiece or WordPiece tokenizer")
    p.add_argument("--input", nargs="+", required=True, help="text files, globs or tfds:NAME")
    p.add_argument("--output", required=True, help="tokenizer directory to create")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--model-type", choices=["unigram", "bpe", "wordpiece"], default="unigram")
    p.add_argument("--character-coverage", type=float, default=0.9995,
                   help="share of characters covered by the vocabulary (0.9995 suits Korean)")
    p.add_argument("--input-sentence-size", type=int, default=2_000_000,
                   help="sentences sampled from the corpus for training")
    p.add_argument("--lowercase", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_train_tokenizer)


def _add_prepare_parser(subparsers) -> None:
    p = subparsers.add_parser("prepare-data", help="turn raw text into pretraining TFRecord shards")
    p.add_argument("--input", nargs="+", required=True,
                   help="plain text (a sentence per line, blank line between documents), .jsonl, "
                        "globs, or tfds:NAME[:SPLIT]")
    p.add_argument("--tokenizer", required=True, help="directory from train-tokenizer")
    p.add_argument("--output", required=True, help="data directory to create")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--pair-task", choices=["nsp", "sop", "none"], default="nsp")
    p.add_argument("--pack-sequences", action="store_true",
                   help="with --pair-task none: fill each example with whole sentences across documents, "
                        "a [SEP] after each (RoBERTa's FULL-SENTENCES; for short documents such as reviews)")
    p.add_argument("--short-seq-prob", type=float, default=0.1)
    p.add_argument("--masking", choices=["dynamic", "static"], default="dynamic")
    p.add_argument("--dupe-factor", type=int, default=1)
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--max-predictions-per-seq", type=int, default=20)
    p.add_argument("--eval-fraction", type=float, default=0.02, help="share of documents for eval")
    p.add_argument("--num-shards", type=int, default=0, help="train shards (0 = by input size)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--docs-per-chunk", type=int, default=128, help="most documents per worker task")
    p.add_argument("--chunk-chars", type=int, default=100_000, help="characters per worker task")
    p.add_argument("--text-field", default="text", help="field of JSON lines / tfds records")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_prepare_data)


def _pretrain(args) -> None:
    from bert_jax.config.loading import load_config
    from bert_jax.training.distributed import maybe_initialize
    from bert_jax.training.train import train_and_evaluate

    maybe_initialize()
    config = load_config(args.config, args.overrides)
    metrics = train_and_evaluate(config, args.data, args.workdir, tuple(args.allow_change))
    if jax_process_index() == 0:
        print(json.dumps({k: round(v, 5) for k, v in metrics.items()}, indent=1))


def jax_process_index() -> int:
    import jax

    return jax.process_index()


def _evaluate(args) -> None:
    from bert_jax.training.train import evaluate_workdir

    print(json.dumps(evaluate_workdir(args.workdir, args.data, args.eval_steps), indent=1))


def _add_train_parsers(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain BertForPreTraining on prepared shards",
                              epilog="Any config field can be overridden: --config.train.num_steps=1000")
    p.add_argument("--config", required=True,
                   help="a packaged config (tiny, mini, small, medium, base, large, demo, tiny_budget) or a .py file "
                        "with get_config()")
    p.add_argument("--data", required=True, help="directory from prepare-data")
    p.add_argument("--workdir", required=True, help="checkpoints, logs and curves go here; resumes if present")
    p.add_argument("--allow-change", action="append", default=[], metavar="FIELD",
                   help="on resume, let this schedule field differ from the saved config.json "
                        "(e.g. train.num_steps to train longer); repeatable")
    p.set_defaults(run=_pretrain, accepts_overrides=True)
    p = subparsers.add_parser("evaluate", help="evaluate the latest checkpoint of a workdir")
    p.add_argument("--workdir", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--eval-steps", type=int, default=0, help="eval batches (0 = the whole eval split)")
    p.set_defaults(run=_evaluate)


def _fill_mask(args) -> None:
    from bert_jax.inference import fill_mask, pretrained

    results = fill_mask.fill_mask(pretrained.load(args.model), args.text, top_k=args.top_k)
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=1))
        return
    for text, per_mask in zip(args.text, results):
        print(text)
        for index, candidates in enumerate(per_mask):
            for c in candidates:
                print(f"  [MASK {index + 1}] {c['score']:.4f}  {c['token_str']:<12} {c['sequence']}")


def _export_hf(args) -> None:
    from bert_jax.inference import hf_export

    model = hf_export.export_directory(args.model, args.output, args.language, args.license, args.keep_positions)
    print(f"wrote {args.output}: step {model.step}; load it with transformers' AutoModelForMaskedLM / "
          f"BertForPreTraining and AutoTokenizer, or publish it with `hf upload USER/MODEL {args.output}`")


def _import_hf(args) -> None:
    from bert_jax.inference import hf

    missing = hf.import_hf(args.input, args.output)
    print(f"wrote {args.output}: continue with `bert-jax prepare-data --tokenizer {args.output}/tokenizer ...` "
          f"and `bert-jax pretrain --workdir {args.output} ...`")
    if missing:
        print(f"initialised (absent from {args.input}): {', '.join(missing)}")


def _add_hf_parsers(subparsers) -> None:
    p = subparsers.add_parser("fill-mask", help="top-k predictions for [MASK] tokens")
    p.add_argument("--model", required=True, help="pretraining workdir or Hugging Face directory")
    p.add_argument("text", nargs="+", help="texts with one or more [MASK]")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print the fill-mask pipeline's JSON")
    p.set_defaults(run=_fill_mask)
    p = subparsers.add_parser("export-hf", help="write a workdir as a Hugging Face BERT directory")
    add_model_flag(p, "pretraining workdir, import-hf output or Hugging Face directory", old_name="--workdir")
    p.add_argument("--output", required=True)
    p.add_argument("--language", nargs="+", default=["ko"], help="ISO 639-1 code(s) for the model card (default ko)")
    p.add_argument("--license", default="apache-2.0",
                   help="Hub license id for the model card (default apache-2.0; check your corpus's terms)")
    p.add_argument("--keep-positions", action="store_true",
                   help="export the whole position table, not only the positions pretraining used")
    p.set_defaults(run=_export_hf)
    p = subparsers.add_parser("import-hf", help="turn a local Hugging Face BERT into a workdir")
    p.add_argument("--input", required=True, help="directory with config.json, weights, tokenizer.json")
    p.add_argument("--output", required=True, help="workdir to create")
    p.set_defaults(run=_import_hf)


FINETUNE_FLAGS = {"max_length": "max_length", "batch_size": "global_batch_size", "epochs": "epochs",
                  "learning_rate": "learning_rate", "patience": "patience", "seed": "seed"}


def _finetune(args) -> None:
    from bert_jax.config.defaults import finetune_config
    from bert_jax.config.loading import apply_overrides
    from bert_jax.training.distributed import maybe_initialize
    from bert_jax.training.finetune import finetune

    if (args.task == "pair-classification") != bool(args.text_pair_column):
        raise ValueError("--task pair-classification needs --text-pair-column, and only it takes one")
    maybe_initialize()
    config = finetune_config()
    for flag, field in FINETUNE_FLAGS.items():
        if getattr(args, flag) is not None:
            config.train[field] = getattr(args, flag)
    config.train.from_scratch = args.from_scratch
    apply_overrides(config, args.overrides)
    result = finetune(args.model, args.train, args.eval, args.workdir, args.text_column, args.label_column,
                      args.text_pair_column, config, args.labels, args.skip_bad_rows)
    if jax_process_index() == 0:
        print(json.dumps({k: result[k] for k in ("best", "labels", "truncated", "skipped_rows")},
                         ensure_ascii=False))


def _predict(args) -> None:
    from bert_jax.data.finetune_data import read_table
    from bert_jax.training.finetune import Classifier

    classifier = Classifier(args.model)
    columns = [args.text_column] + ([args.text_pair_column] if classifier.pairs else [])
    rows = read_table(args.input, columns).rows
    pairs = [str(r[args.text_pair_column]) for r in rows] if classifier.pairs else None
    names, probabilities = classifier.predict([str(r[args.text_column]) for r in rows], pairs)
    with open(args.output, "w", encoding="utf-8") as f:
        for row, name, p in zip(rows, names, probabilities):
            f.write(json.dumps({"text": row[args.text_column], "label": name,
                                "probabilities": dict(zip(classifier.labels, map(float, p)))}, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} predictions to {args.output}")


def _add_finetune_parsers(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a classifier on labelled text",
                              epilog="Any field of bert_jax.config.defaults.finetune_config() can be overridden: "
                                     "--config.mesh.tensor=2 --config.model.dtype=bfloat16")
    add_model_flag(p, "pretraining workdir or Hugging Face BERT directory to start from", old_name="--init")
    p.add_argument("--train", required=True, help=".tsv, .csv or .jsonl")
    p.add_argument("--eval", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--task", choices=["classification", "pair-classification"], default="classification")
    p.add_argument("--text-column", default="text")
    p.add_argument("--text-pair-column")
    p.add_argument("--label-column", default="label")
    p.add_argument("--labels", nargs="+", help="the label set, in this order (default: the training file's "
                                               "labels, sorted); any other label is an error naming the line")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="skip and count rows with the wrong number of fields, bad JSON or an empty label "
                        "(default: an error naming the line)")
    p.add_argument("--max-length", type=int, help="tokens per example (default 128)")
    p.add_argument("--batch-size", type=int, help="global batch (default 32)")
    p.add_argument("--epochs", type=int, help="default 3")
    p.add_argument("--learning-rate", type=float, help="peak learning rate (default 5e-5)")
    p.add_argument("--patience", type=int, help="epochs without eval improvement before stopping (default 1)")
    p.add_argument("--seed", type=int)
    p.add_argument("--from-scratch", action="store_true", help="random weights, same architecture (baseline)")
    p.set_defaults(run=_finetune, accepts_overrides=True)
    p = subparsers.add_parser("predict", help="predictions with probabilities from a fine-tuned model")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="JSON lines")
    p.add_argument("--text-column", default="text")
    p.add_argument("--text-pair-column")
    p.set_defaults(run=_predict)


def _demo(args) -> None:
    from bert_jax.demo import run_demo

    run_demo(args.workdir, args.corpus, args.steps)


def _add_demo_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the whole workflow on built-in Korean text (a few minutes)")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--corpus", help="your own text (a sentence per line, blank line between documents)")
    p.add_argument("--steps", type=int, help="pretraining steps (default: the demo config's 800)")
    p.set_defaults(run=_demo)


class OldFlagName(argparse.Action):
    """A flag's name before this release (hidden from --help): stores under the new name's dest and
    issues a DeprecationWarning (silent unless warnings are enabled, so scripts and their one-line
    errors stay as they were). Old names stay for one release (argparse of Python < 3.13 has no
    `deprecated`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        import warnings

        warnings.warn(f"{parser.prog}: {option_string} is now --{self.dest}; the old name goes in the next "
                      f"release", DeprecationWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def add_model_flag(parser: argparse.ArgumentParser, help: str, old_name: str | None = None) -> None:
    """The required `--model DIR` flag, the one name every subcommand uses for the model it reads,
    with `old_name` (e.g. export-hf's --workdir) still accepted as a hidden alias."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", metavar="DIR", help=help)
    if old_name:
        group.add_argument(old_name, dest="model", metavar="DIR", action=OldFlagName, help=argparse.SUPPRESS)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, except where there is none to show (None, a store_true
    flag's False) or the help text already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def version() -> str:
    """The installed distribution's version (importlib.metadata)."""
    from importlib import metadata

    try:
        return metadata.version("bert_jax")
    except metadata.PackageNotFoundError:  # run from a source tree that was never pip-installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bert-jax", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_tokenizer_parser(subparsers)
    _add_prepare_parser(subparsers)
    _add_train_parsers(subparsers)
    _add_hf_parsers(subparsers)
    _add_finetune_parsers(subparsers)
    _add_demo_parser(subparsers)
    for command in subparsers.choices.values():
        command.formatter_class = HelpFormatter
        for action in command._actions:  # argparse formats no default for a flag without help text
            if action.help is None and action.default not in (None, False):
                action.help = "(default: %(default)s)"
        command.add_argument("--debug", action="store_true",
                             help="show the Python traceback of an error (or set BERT_JAX_DEBUG=1)")
    return parser


INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that end a command with a one-line message instead of a traceback: bad input and
    files (exit 2), and failures of the run itself (exit 1): divergence, a checkpoint that could
    not be written (`CheckpointSaveError`, an OSError), file-system errors of the OS, TensorFlow's
    file systems and safetensors."""
    errors = [*INPUT_ERRORS, FloatingPointError, OSError]
    if "tensorflow" in sys.modules:
        errors.append(sys.modules["tensorflow"].errors.OpError)
    if "safetensors" in sys.modules:
        errors.append(sys.modules["safetensors"].SafetensorError)
    return tuple(errors)


def _exit_status(error: BaseException) -> int:
    """2 for bad input (usage, files, values), 1 for a run that failed."""
    tf = sys.modules.get("tensorflow")
    input_errors = INPUT_ERRORS + ((tf.errors.NotFoundError, tf.errors.InvalidArgumentError) if tf else ())
    return 2 if isinstance(error, input_errors) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bert-jax` console script. Returns the exit status: 0, 2 for bad input,
    1 for a failed run; `--debug` (or BERT_JAX_DEBUG=1) shows tracebacks instead of one line."""
    if argv is None and sys.argv[1:2] and sys.argv[1] in TRAINING_COMMANDS:
        from bert_jax.training import cpu_tuning

        cpu_tuning.reexec_with_tuned_malloc()
    args, unknown = build_parser().parse_known_args(argv)
    if unknown and not getattr(args, "accepts_overrides", False):
        build_parser().error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = unknown
    debug = args.debug or os.environ.get("BERT_JAX_DEBUG", "") not in ("", "0")
    try:
        args.run(args)
    except Exception as error:  # noqa: BLE001 - re-raised below unless it is an expected error
        if debug or not isinstance(error, _expected_errors()):
            raise
        message = " ".join(str(error).split("\n")[0].split()) or type(error).__name__
        print(f"bert-jax {args.command}: error: {message}", file=sys.stderr)
        return _exit_status(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
