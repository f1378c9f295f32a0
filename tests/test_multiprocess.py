"""Two real processes on loopback (`jax.distributed`, gloo CPU collectives), each with its own
devices and its own shards, train exactly like one process fed the same global batches."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_pretrain import tiny_config

from bert_jax.data import input_pipeline
from bert_jax.data.pretraining_data import DataSettings, load_metadata, prepare_data
from bert_jax.metrics_log import read_metrics
from bert_jax.training.sharding import global_batch
from bert_jax.training.train import setup

STEPS = 4
CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
from test_pretrain import tiny_config

def get_config():
    return tiny_config(num_steps={steps}, log_every=1, eval_every=0, eval_steps=1, checkpoint_every={steps})
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory, korean_corpus, tokenizer_dir):
    out = tmp_path_factory.mktemp("mp") / "data"
    prepare_data([str(korean_corpus)], tokenizer_dir, str(out),
                 DataSettings(max_seq_length=32, max_predictions_per_seq=5, num_shards=3, eval_fraction=0.1),
                 progress=False)
    return str(out)


def run_cli_on_two_processes(arguments: list[str]) -> list[str]:
    """Runs `bert-jax ARGUMENTS` as 2 processes (2 CPU devices each) joined by jax.distributed on
    loopback; asserts both succeed and returns their outputs."""
    port = _free_port()
    processes = []
    for rank in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(rank), XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   JAX_PLATFORMS="cpu")
        processes.append(subprocess.Popen([sys.executable, "-m", "bert_jax.cli"] + arguments, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def _run_two_processes(tmp_path, data_dir):
    config_file = tmp_path / "tiny_config.py"
    config_file.write_text(CONFIG_FILE.format(tests=os.path.dirname(__file__), steps=STEPS))
    return run_cli_on_two_processes(["pretrain", "--config", str(config_file), "--data", data_dir,
                                     "--workdir", str(tmp_path / "work")])


def _single_process_losses(data_dir):
    """One process, 8 devices, global batch = host 0's rows then host 1's rows."""
    metadata = load_metadata(data_dir)
    run = setup(tiny_config(num_steps=STEPS), metadata)
    state = run.init(jax.random.fold_in(jax.random.PRNGKey(0), 1))
    hosts = [input_pipeline.train_batches(data_dir, metadata, 8, STEPS, seed=0, mask_prob=0.15, shuffle_buffer=64,
                                          process_index=i, process_count=2) for i in range(2)]
    losses = []
    for parts in zip(*hosts):
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        state, metrics = run.train_step(state, global_batch(batch, run.mesh), jax.random.PRNGKey(0))
        m = jax.device_get(metrics)
        losses.append((m["mlm_loss_sum"] / m["mlm_weight"], m["nsp_loss_sum"] / m["nsp_weight"]))
    return np.array(losses)


def test_two_processes_match_one_with_uneven_shards(tmp_path, uneven_data):
    assert len(load_metadata(uneven_data)["splits"]["train"]["files"]) == 3  # host 0 reads 2, host 1 reads 1
    outputs = _run_two_processes(tmp_path, uneven_data)
    rows = [r for r in read_metrics(str(tmp_path / "work")) if "train/mlm_loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # logged once, by process 0
    ours = np.array([(r["train/mlm_loss"], r["train/nsp_loss"]) for r in rows])
    np.testing.assert_allclose(ours, _single_process_losses(uneven_data), atol=1e-5)
    assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in outputs[0]
    assert "pretraining" not in outputs[1]  # only process 0 talks
    assert sorted(os.listdir(tmp_path / "work" / "checkpoints")) == [str(STEPS)]
    assert json.load(open(tmp_path / "work" / "config.json"))["train"]["num_steps"] == STEPS
