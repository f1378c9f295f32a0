"""The CLI's exit paths: the project's own errors and the libraries' file errors are one line
(exit 2 for bad input, 1 for a failed run); --debug or BERT_JAX_DEBUG=1 shows the traceback;
an unexpected exception keeps its traceback."""

import pytest
import tensorflow as tf
from test_fresh_machine import PREPARE, TINY_CONFIG

from bert_jax import cli
from bert_jax.training.checkpoint import CheckpointSaveError
from bert_jax.training.train import NonFiniteLossError


def _raising(error):
    def run(args):
        raise error
    return run


@pytest.mark.parametrize("error, status", [
    (NonFiniteLossError("non-finite loss at step 7; stopping"), 1),
    (FloatingPointError("non-finite fine-tuning loss at step 3"), 1),
    (CheckpointSaveError("the checkpoint of step 4 in /w/checkpoints could not be written: disk full"), 1),
    (OSError(28, "No space left on device"), 1),
    (tf.errors.NotFoundError(None, None, "gs://b/data/metadata.json not found\nmore detail"), 2),
    (tf.errors.PermissionDeniedError(None, None, "gs://b/w: permission denied"), 1),
    (ValueError("--batch-size must be >= 1"), 2),
    (IsADirectoryError(21, "Is a directory", "x.tsv"), 2),
])
def test_project_and_file_errors_are_one_line(monkeypatch, capsys, error, status):
    monkeypatch.delenv("BERT_JAX_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_evaluate", _raising(error))
    assert cli.main(["evaluate", "--workdir", "w", "--data", "d"]) == status
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("bert-jax evaluate: error: ") and str(error).splitlines()[0] in err


def test_safetensors_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from safetensors.numpy import load_file

    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad")
    monkeypatch.setattr(cli, "_evaluate", lambda args: load_file(str(tmp_path / "model.safetensors")))
    assert cli.main(["evaluate", "--workdir", "w", "--data", "d"]) == 1
    assert capsys.readouterr().err.startswith("bert-jax evaluate: error: ")


def test_debug_shows_the_traceback_and_unexpected_errors_keep_it(monkeypatch):
    monkeypatch.setattr(cli, "_evaluate", _raising(NonFiniteLossError("non-finite loss at step 7")))
    with pytest.raises(NonFiniteLossError):
        cli.main(["evaluate", "--workdir", "w", "--data", "d", "--debug"])
    monkeypatch.setenv("BERT_JAX_DEBUG", "1")
    with pytest.raises(NonFiniteLossError):
        cli.main(["evaluate", "--workdir", "w", "--data", "d"])
    monkeypatch.delenv("BERT_JAX_DEBUG")
    monkeypatch.setattr(cli, "_evaluate", _raising(KeyError("a bug")))
    with pytest.raises(KeyError):
        cli.main(["evaluate", "--workdir", "w", "--data", "d"])


def test_a_diverging_pretrain_ends_in_one_line(tmp_path, korean_corpus, tokenizer_dir, capsys):
    data = str(tmp_path / "data")
    assert cli.main(["prepare-data", "--input", str(korean_corpus), "--tokenizer", tokenizer_dir, "--output", data,
                     *PREPARE]) == 0
    (tmp_path / "tiny.py").write_text(TINY_CONFIG)
    capsys.readouterr()
    assert cli.main(["pretrain", "--config", str(tmp_path / "tiny.py"), "--data", data, "--workdir",
                     str(tmp_path / "w"), "--config.optim.learning_rate=1e30", "--config.train.num_steps=40"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("bert-jax pretrain: error: non-finite loss at step ")
