"""Load anywhere: a model pretrained on 8 devices (fsdp=8, or a 2x2x2 mesh) gives the same fill-mask
predictions and the same export in a separate 1-device process; loading restores the parameters
only (no training module, optimizer or train state)."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from safetensors.numpy import load_file

from bert_jax.cli import main
from bert_jax.inference import fill_mask, pretrained
from bert_jax.training import checkpoint, optim, train

TEXTS = ["서울은 한국의 [MASK]이다.", "[MASK]의 장군이 바다에서 [MASK]을 하였다."]
TRAINED_LENGTH, TABLE = 32, 64  # the sharded_workdirs fixture (conftest.py): data sequence length, position table

# Runs in a fresh process that sees one CPU device: `bert-jax fill-mask --json` and `bert-jax export-hf`
# of each workdir, and which training modules the process imported on the way.
ONE_DEVICE = """
import contextlib, io, json, sys
import jax
from bert_jax.cli import main
job = json.loads(sys.argv[1])
result = {"devices": jax.device_count(), "fill_mask": {}}
for name, workdir in job["workdirs"].items():
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["fill-mask", "--model", workdir, "--json"] + job["texts"]) == 0
    result["fill_mask"][name] = json.loads(printed.getvalue())
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export-hf", "--workdir", workdir, "--output", job["outputs"][name]]) == 0
result["imported"] = [m for m in ("bert_jax.training.train", "bert_jax.training.train_step", "bert_jax.training.optim", "optax")
                      if m in sys.modules]
print(json.dumps(result, ensure_ascii=False))
"""


def _exports_equal(a: str, b: str) -> None:
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for name in os.listdir(a):
        if name == "model.safetensors":
            x, y = load_file(os.path.join(a, name)), load_file(os.path.join(b, name))
            assert sorted(x) == sorted(y)
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)
        else:
            assert open(os.path.join(a, name), "rb").read() == open(os.path.join(b, name), "rb").read(), name


def test_a_model_trained_on_8_devices_gives_the_same_outputs_in_a_1_device_process(sharded_workdirs, tmp_path,
                                                                                    capsys):
    eight = {}
    for name, workdir in sharded_workdirs.items():
        assert main(["fill-mask", "--model", workdir, "--json"] + TEXTS) == 0
        eight[name] = json.loads(capsys.readouterr().out)
        assert main(["export-hf", "--workdir", workdir, "--output", str(tmp_path / "eight" / name)]) == 0
        capsys.readouterr()
    job = {"workdirs": sharded_workdirs, "texts": TEXTS,
           "outputs": {name: str(tmp_path / "one" / name) for name in sharded_workdirs}}
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([repository, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", ONE_DEVICE, json.dumps(job)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads(done.stdout.strip().splitlines()[-1])
    assert jax.device_count() == 8 and one["devices"] == 1
    assert one["imported"] == []  # no trainer, train step, optimizer or optax in the loading process
    for name in sharded_workdirs:
        for per_text_8, per_text_1 in zip(eight[name], one["fill_mask"][name]):
            for candidates_8, candidates_1 in zip(per_text_8, per_text_1):
                assert [(c["token"], c["token_str"], c["sequence"]) for c in candidates_8] == [
                    (c["token"], c["token_str"], c["sequence"]) for c in candidates_1]
                np.testing.assert_allclose([c["score"] for c in candidates_8], [c["score"] for c in candidates_1],
                                           rtol=1e-6)
        _exports_equal(str(tmp_path / "eight" / name), str(tmp_path / "one" / name))


def test_loading_restores_parameters_only_onto_the_devices_asked_for(sharded_workdirs, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("inference built part of the training setup")

    monkeypatch.setattr(train, "setup", refuse)
    monkeypatch.setattr(optim, "make_optimizer", refuse)
    monkeypatch.setattr(checkpoint.Checkpointer, "restore", refuse)  # the whole train state's restore
    workdir = sharded_workdirs["fsdp8"]
    host = pretrained.load(workdir)
    assert host.step == 2 and host.config.max_position_embeddings == TABLE
    assert sorted(host.params) == ["bert", "mlm_bias", "mlm_norm", "mlm_transform", "nsp"]
    assert all(type(leaf) is np.ndarray and leaf.dtype == np.float32 for leaf in jax.tree.leaves(host.params))
    replicated = NamedSharding(jax.make_mesh((8,), ("x",)), PartitionSpec())
    placed = pretrained.load(workdir, sharding=replicated)
    for a, b in zip(jax.tree.leaves(host.params), jax.tree.leaves(placed.params)):
        assert b.sharding == replicated
        np.testing.assert_array_equal(a, np.asarray(b))
    scores = [[c["score"] for c in fill_mask.fill_mask(model, TEXTS[0])[0][0]] for model in (placed, host)]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6)


@pytest.mark.parametrize("field, value, message", [
    ("intermediate_size", 128, ": parameter bert/encoder/layer_0/intermediate/bias has shape (64,), the model "
                               "config expects (128,)"),
    ("num_layers", 2, " has no parameter bert/encoder/layer_1/attention_norm/bias, which the model config needs")])
def test_a_config_that_disagrees_with_the_checkpoint_is_a_one_line_error(sharded_workdirs, tmp_path, capsys, field,
                                                                         value, message):
    workdir = tmp_path / "changed"
    shutil.copytree(sharded_workdirs["fsdp8"], workdir)
    config = json.load(open(workdir / "config.json"))
    config["model"][field] = value
    json.dump(config, open(workdir / "config.json", "w"))
    assert main(["fill-mask", "--model", str(workdir), "서울은 [MASK]이다."]) == 2
    err = capsys.readouterr().err
    assert err == f"bert-jax fill-mask: error: {workdir}/checkpoints/2{message}\n"
