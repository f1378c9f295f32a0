"""Readable logs (TensorBoard scalars and config text, curves.png title and panels) and CLI
conventions (defaults in --help, --version, one flag name across subcommands)."""

import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bert_jax import metrics_log


def _events(workdir):
    accumulator = EventAccumulator(os.path.join(workdir, "tensorboard"))
    accumulator.Reload()
    return accumulator


def _logged(tmp_path, rows, start_step=0):
    logger = metrics_log.MetricsLogger(str(tmp_path), print_fn=lambda line: None, start_step=start_step)
    for step, metrics in rows:
        logger.write(step, metrics)
    return _events(tmp_path)


def test_tensorboard_scalars_and_config_text(tmp_path):
    config = {"model": {"num_layers": 2, "hidden_size": 32, "num_heads": 4}, "data_dir": "/data/ko"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    events = _logged(tmp_path, [(10, {"train/mlm_loss": 4.5, "train/learning_rate": 1e-4, "train/grad_norm": 1.0}),
                                (20, {"train/mlm_loss": 3.25, "train/learning_rate": 2e-4, "train/grad_norm": 1.0}),
                                (20, {"eval/mlm_loss": 3.5})])
    assert [(e.step, e.value) for e in events.Scalars("train/mlm_loss")] == [(10, 4.5), (20, 3.25)]
    assert [(e.step, e.value) for e in events.Scalars("train/learning_rate")] == [
        (10, pytest.approx(1e-4)), (20, pytest.approx(2e-4))]
    assert [(e.step, e.value) for e in events.Scalars("eval/mlm_loss")] == [(20, 3.5)]
    text = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.removeprefix("```json\n").removesuffix("\n```")) == config


def test_resumed_run_rewrites_scalars_once_per_step(tmp_path):
    _logged(tmp_path, [(1, {"train/mlm_loss": 5.0}), (2, {"train/mlm_loss": 4.0}), (3, {"train/mlm_loss": 3.0})])
    events = _logged(tmp_path, [(3, {"train/mlm_loss": 2.5})], start_step=2)
    assert [(e.step, e.value) for e in events.Scalars("train/mlm_loss")] == [(1, 5.0), (2, 4.0), (3, 2.5)]


def test_curves_have_a_title_and_a_learning_rate_panel(tmp_path):
    import matplotlib.image

    (tmp_path / "config.json").write_text(json.dumps(
        {"model": {"num_layers": 2, "hidden_size": 32, "num_heads": 4}, "data_dir": "/data/ko"}))
    _logged(tmp_path, [(10, {"train/mlm_loss": 4.5, "train/learning_rate": 1e-4, "train/grad_norm": 1.0}), (10, {"eval/mlm_loss": 4.0})])
    assert metrics_log.curves_title(str(tmp_path)) == f"{tmp_path.name}: L=2 H=32 A=4, data /data/ko"
    image = matplotlib.image.imread(metrics_log.plot_curves(str(tmp_path)))
    assert image.shape[:2] == (700, 1400)  # 14 x 7 inches at 100 dpi: 3 panels a row
    os.remove(tmp_path / "config.json")
    assert metrics_log.curves_title(str(tmp_path)) == tmp_path.name


def _cli(*argv):
    """(exit status, stdout, stderr) of `python -m bert_jax.cli ARGV` (argparse exits, so a subprocess)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "bert_jax.cli", *argv], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def test_version_and_defaults_in_help():
    from importlib import metadata

    assert _cli("--version")[:2] == (0, f"bert-jax {metadata.version('bert_jax')}\n")
    status, out, _ = _cli("prepare-data", "--help")
    out = " ".join(out.split())  # argparse wraps lines
    assert status == 0 and "--max-seq-length MAX_SEQ_LENGTH tokens per example (default: 128)" in out
    assert "(default: nsp)" in out and "(default: None)" not in out and "(default: False)" not in out
    status, out, _ = _cli("finetune", "--help")
    out = " ".join(out.split())
    assert "--model DIR" in out and "--init" not in out and "(default: text)" in out


def test_one_model_flag_with_old_names_as_hidden_aliases(capsys):
    from bert_jax.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["export-hf", "--model", "a", "--output", "b"]).model == "a"
    with pytest.warns(DeprecationWarning, match="--workdir is now --model"):
        assert parser.parse_args(["export-hf", "--workdir", "a", "--output", "b"]).model == "a"
    with pytest.warns(DeprecationWarning, match="--init is now --model"):
        args = parser.parse_args(["finetune", "--init", "m", "--train", "t", "--eval", "e", "--workdir", "w"])
    assert (args.model, args.workdir) == ("m", "w")
    assert parser.parse_args(["fill-mask", "--model", "m", "x [MASK]"]).model == "m"
    with pytest.raises(SystemExit):
        parser.parse_args(["export-hf", "--output", "b"])
    assert "one of the arguments --model is required" in capsys.readouterr().err


def test_train_tokenizer_shows_progress(tmp_path, korean_corpus, capsys, monkeypatch):
    from bert_jax import progress
    from bert_jax.data import tokenizer_training

    monkeypatch.setattr(progress, "DELAY_S", 0.0)  # the corpus is read faster than the bar's delay

    documents = len([d for d in korean_corpus.read_text(encoding="utf-8").split("\n\n") if d.strip()])
    tokenizer_training.train([str(korean_corpus)], str(tmp_path / "tok"), vocab_size=100, progress=True)
    out, err = capsys.readouterr()
    assert f"reading the corpus: {documents}doc" in err
    assert "training a 100-token unigram model on" in out
