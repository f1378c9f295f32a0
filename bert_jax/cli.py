"""The `bert-jax` command line: parses arguments, then calls library functions."""

from __future__ import annotations

import argparse
import json
import os
import sys

from bert_jax.config import flag_fields

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

TRAINING_COMMANDS = ("pretrain", "evaluate", "finetune", "demo")  # re-executed with tuned malloc


TOKENIZER_SETTINGS = ("vocab_size", "model_type", "character_coverage", "input_sentence_size", "lowercase", "seed")


def _train_tokenizer(args) -> None:
    from bert_jax.data import tokenizer_training

    settings = {name: getattr(args, name) for name in TOKENIZER_SETTINGS if getattr(args, name) is not None}
    tok = tokenizer_training.train(args.input, args.output, progress=True, **settings)
    print(f"wrote {args.output}: {tok.model_type} tokenizer, {tok.vocab_size} tokens, "
          f"fingerprint {tok.fingerprint}")


def data_settings_from(args):
    """`DataSettings` from the `prepare-data` flags given; the others keep the dataclass's defaults."""
    import dataclasses

    from bert_jax.data.pretraining_data import DataSettings

    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(DataSettings)}
    return DataSettings(**{name: value for name, value in given.items() if value is not None})


def _prepare_data(args) -> None:
    from bert_jax.data.pretraining_data import prepare_data

    settings = data_settings_from(args)
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
    setting = _keyword_default("bert_jax.data.tokenizer_training", "train")  # one default: train()'s keywords
    setting(p.add_argument("--vocab-size", type=int, help="exact vocabulary size, specials included"))
    setting(p.add_argument("--model-type", choices=["unigram", "bpe", "wordpiece"], help="tokenizer model"))
    setting(p.add_argument("--character-coverage", type=float,
                           help="share of characters covered by the vocabulary (the default suits Korean)"))
    setting(p.add_argument("--input-sentence-size", type=int, help="sentences sampled from the corpus for training"))
    setting(p.add_argument("--lowercase", action="store_true", default=None, help="lower-case the text first"))
    setting(p.add_argument("--seed", type=int, help="sentence sampling and training seed"))
    p.set_defaults(run=_train_tokenizer)


def _add_prepare_parser(subparsers) -> None:
    p = subparsers.add_parser("prepare-data", help="turn raw text into pretraining TFRecord shards")
    p.add_argument("--input", nargs="+", required=True,
                   help="plain text (a sentence per line, blank line between documents), .jsonl, "
                        "globs, or tfds:NAME[:SPLIT]")
    p.add_argument("--tokenizer", required=True, help="directory from train-tokenizer")
    p.add_argument("--output", required=True, help="data directory to create")
    setting = _field_default("bert_jax.data.pretraining_data", "DataSettings")  # one default: the dataclass's
    setting(p.add_argument("--max-seq-length", type=int, help="tokens per example"))
    setting(p.add_argument("--pair-task", choices=["nsp", "sop", "none"], help="sentence-pair task"))
    setting(p.add_argument("--pack-sequences", action="store_true", default=None,
                           help="with --pair-task none: fill each example with whole sentences across documents, "
                                "a [SEP] after each (RoBERTa's FULL-SENTENCES; for short texts such as reviews)"))
    setting(p.add_argument("--short-seq-prob", type=float, help="share of examples with a shorter target length"))
    setting(p.add_argument("--masking", choices=["dynamic", "static"], help="mask in the input pipeline or store masks"))
    setting(p.add_argument("--dupe-factor", type=int, help="passes over the corpus"))
    setting(p.add_argument("--mask-prob", type=float, help="share of real tokens to predict"))
    setting(p.add_argument("--max-predictions-per-seq", type=int,
                           help="masked positions per example (0 = ceil(length x mask-prob): 20 at 128 x 0.15; "
                                "pretraining with a larger config.data.mask_prob needs more)"))
    setting(p.add_argument("--eval-fraction", type=float, help="share of documents for eval"))
    setting(p.add_argument("--num-shards", type=int, help="train shards (0 = by input size)"))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    setting(p.add_argument("--seed", type=int, help="seed of the pairs and (static) masks"))
    setting(p.add_argument("--docs-per-chunk", type=int, help="most documents per worker task"))
    setting(p.add_argument("--chunk-chars", type=int, help="characters per worker task"))
    setting(p.add_argument("--text-field", help="field of JSON lines / tfds records"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_prepare_data)


def _pretrain(args) -> None:
    from bert_jax.config.loading import load_config

    config = load_config(args.config, args.overrides)  # before JAX and TensorFlow load: errors come at once
    from bert_jax.training.distributed import maybe_initialize
    from bert_jax.tasks.pretraining import train_and_evaluate

    maybe_initialize()
    metrics = train_and_evaluate(config, args.data, args.workdir, tuple(args.allow_change))
    if jax_process_index() == 0:
        print(json.dumps({k: round(v, 5) for k, v in metrics.items()}, indent=1))


def jax_process_index() -> int:
    import jax

    return jax.process_index()


def _evaluate(args) -> None:
    from bert_jax.tasks.pretraining import evaluate_workdir

    print(json.dumps(evaluate_workdir(args.workdir, args.data, args.eval_steps, args.mask_prob), indent=1))


def _add_train_parsers(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain BertForPreTraining on prepared shards",
                              epilog="Any config field can be overridden: --config.train.num_steps=1000 or "
                                     "--config.train.num_steps 1000")
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
    p.add_argument("--mask-prob", type=float, default=None,
                   help="mask this share of the eval tokens (default: the run's data.mask_prob; dynamic-masking "
                        "data only): scores runs trained at different rates alike (the same masks for runs with "
                        "the same train.seed and eval batch size)")
    p.set_defaults(run=_evaluate)


def _fill_mask(args) -> None:
    from bert_jax.inference import fill_mask, pretrained

    top_k = {} if args.top_k is None else {"top_k": args.top_k}
    results = fill_mask.fill_mask(pretrained.load(args.model), args.text, **top_k)
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

    model = hf_export.export_directory(args.model, args.output, args.language, args.license, args.keep_positions,
                                         progress=True)
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
    _keyword_default("bert_jax.inference.fill_mask", "fill_mask")(
        p.add_argument("--top-k", type=int, help="candidates per [MASK]"))
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


def finetune_config_from(args):
    """`bert_jax.config.defaults.finetune_config()` with the `finetune` flags that name config
    fields (`--epochs`, ...), then the `--config.a.b` overrides, which win over those flags."""
    from bert_jax.config.defaults import finetune_config
    from bert_jax.config.loading import apply_overrides

    config = finetune_config()
    config.update_from_flattened_dict(flag_fields.given(args, flag_fields.FINETUNE))
    return apply_overrides(config, args.overrides)


def _finetune(args) -> None:
    if (args.task == "pair-classification") != bool(args.text_pair_column):
        raise ValueError("--task pair-classification needs --text-pair-column, and only it takes one")
    config = finetune_config_from(args)  # before JAX and TensorFlow load: errors come at once
    from bert_jax.training.distributed import maybe_initialize
    from bert_jax.tasks.classification import finetune

    maybe_initialize()
    result = finetune(args.model, args.train, args.eval, args.workdir, args.text_column, args.label_column,
                      args.text_pair_column, config, args.labels, args.skip_bad_rows)
    if jax_process_index() == 0:
        print(json.dumps({k: result[k] for k in ("best", "labels", "truncated", "skipped_rows")},
                         ensure_ascii=False))


def _predict(args) -> None:
    from bert_jax.data.finetune_data import read_table
    from bert_jax.tasks.classification import Classifier

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
    add_config_flags(p, flag_fields.FINETUNE, "finetune_config")
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

    run_demo(args.workdir, args.corpus, args.steps, overrides=args.overrides)


def _add_demo_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the whole workflow on built-in Korean text (a few minutes)",
                              epilog="Any field of the demo config can be overridden: --config.model.num_layers=4")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--corpus", help="your own text (a sentence per line, blank line between documents)")
    add_config_flags(p, flag_fields.DEMO, "demo_config")
    p.set_defaults(run=_demo, accepts_overrides=True)


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


# Flags whose setting has its one default elsewhere (a config field, a dataclass field, a keyword
# argument) default to None, "not given", and carry `default_source`: a function returning that
# default, which --help calls (`HelpFormatter`), so that building the parser imports nothing.

def add_config_flags(parser: argparse.ArgumentParser, table: dict[str, tuple], defaults: str) -> None:
    """Adds the flags of `table` (`bert_jax.config.flag_fields`), each a short name for a field of
    the config that `bert_jax.config.defaults.<defaults>()` makes; --help shows the field's default."""
    for flag, (field, kind, text) in table.items():
        text = f"{text}; sets config.{field}"
        if kind is bool:
            action = parser.add_argument(flag, action="store_true", default=None, help=text)
        else:
            action = parser.add_argument(flag, type=kind, help=text)
        action.default_source = lambda defaults=defaults, field=field: _config_default(defaults, field)


def _config_default(defaults: str, field: str):
    """The default of config field `field` ('train.epochs') in `bert_jax.config.defaults.<defaults>()`."""
    from bert_jax.config import defaults as defaults_module

    config = getattr(defaults_module, defaults)()
    for name in field.split("."):
        config = config[name]
    return config


def _field_default(module: str, dataclass: str):
    """A function marking a flag whose default is the same-named field's of `module.dataclass`."""
    def mark(action: argparse.Action) -> None:
        def source():
            import importlib

            return getattr(getattr(importlib.import_module(module), dataclass), action.dest)
        action.default_source = source
    return mark


def _keyword_default(module: str, function: str):
    """A function marking a flag whose default is the same-named keyword's of `module.function`."""
    def mark(action: argparse.Action) -> None:
        def source():
            import importlib
            import inspect

            return inspect.signature(getattr(importlib.import_module(module), function)).parameters[action.dest].default
        action.default_source = source
    return mark


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, except where there is none to show (None, a store_true
    flag's False) or the help text already says it; a flag with a `default_source` shows that
    default, looked up only when help is shown."""

    def _get_help_string(self, action):
        if hasattr(action, "default_source"):
            value = action.default_source()
            if value is False:  # a switch
                return action.help
            shown = f"(default: {value})".replace("%", "%%")
            return f"{action.help} {shown}" if action.help else shown
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
    from bert_jax import completion

    parser = argparse.ArgumentParser(prog="bert-jax", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--print-completion", action=completion.PrintCompletion,
                        help="print a tab-completion script for the shell (needs shtab)")
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
        from bert_jax import backend

        backend.reexec_with_tuned_malloc()
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
