"""Reliability: a run's outputs are never lost or damaged, one writer per output, stale staging of
killed runs is cleaned, bad config values and mismatched data/workdirs are one-line errors before any
work, resumes refuse silent changes, and kill -9 at random points resumes exactly."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

import ml_collections
import pytest
from conftest import make_korean_corpus
from test_pretrain import tiny_config

from bert_jax import staging
from bert_jax.cli import main
from bert_jax.config.defaults import bert_config, demo_config, finetune_config
from bert_jax.config.validation import (FINETUNING, PRETRAINING, numeric_fields, validate, validate_finetuning,
                                        validate_pretraining)
from bert_jax.data.pretraining_data import DataSettings, prepare_data
from bert_jax.metrics_log import read_metrics
from bert_jax.tasks.pretraining import train_and_evaluate

TESTS = os.path.dirname(os.path.abspath(__file__))
STEPS = 8
CONFIG_FILE = f"""
import sys
sys.path.insert(0, {TESTS!r})
from test_pretrain import tiny_config

def get_config():
    config = tiny_config(num_steps={STEPS}, log_every=1, eval_every=0, eval_steps=1, checkpoint_every=2)
    config.mesh.update(data=1, fsdp=8)  # parameters sharded over the 8 fake CPU devices
    return config
"""
CLI = [sys.executable, "-m", "bert_jax.cli"]
SUBPROCESS_ENV = dict(os.environ, BERT_JAX_MALLOC_TUNING="0")  # one interpreter start, not two


def cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `bert-jax ARGV` run in this process."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, command: str) -> str:
    """The message of a `bert-jax COMMAND: error: MESSAGE` stderr that holds nothing else."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bert-jax {command}: error: "), err
    return lines[0][len(f"bert-jax {command}: error: "):]


def snapshot(directory) -> dict[str, bytes]:
    """Every file under `directory` by relative path, with its bytes (a symbolic link: its target)."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = os.readlink(path) if os.path.islink(path) else \
                open(path, "rb").read()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory, korean_corpus, tokenizer_dir):
    out = tmp_path_factory.mktemp("rel") / "data"
    prepare_data([str(korean_corpus)], tokenizer_dir, str(out),
                 DataSettings(max_seq_length=32, max_predictions_per_seq=5, eval_fraction=0.1, num_shards=2),
                 progress=False)
    return str(out)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny_config.py"
    path.write_text(CONFIG_FILE)
    return str(path)


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """A tokenizer of the same size (100) as `tokenizer_dir`, trained on other text."""
    from bert_jax.data import tokenizer_training

    root = tmp_path_factory.mktemp("other")
    corpus = make_korean_corpus(root / "other.txt", seed=7)
    return str(tokenizer_training.train([str(corpus)], str(root / "tok"), vocab_size=100, model_type="unigram").directory)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data, config_file):
    """An uninterrupted CLI run of STEPS steps (the reference of the kill -9 test)."""
    workdir = str(tmp_path_factory.mktemp("finished") / "work")
    assert main(["pretrain", "--config", config_file, "--data", data, "--workdir", workdir]) == 0
    return workdir


# --- config values: every numeric field has a range, checked before any work (#20 kind 3) ---

def test_every_numeric_field_of_the_defaults_has_a_range():
    assert set(numeric_fields(bert_config(2, 128))) == set(PRETRAINING)
    assert set(numeric_fields(finetune_config())) == set(FINETUNING)
    validate_pretraining(demo_config())
    validate_finetuning(finetune_config())
    config = bert_config(2, 128)
    config.train.new_interval = 5
    with pytest.raises(ValueError, match=r"^config.train.new_interval: no range is defined"):
        validate(config, PRETRAINING)
    config = bert_config(2, 128)
    config.optim.eps = float("nan")
    with pytest.raises(ValueError, match=r"^config.optim.eps=nan: must be > 0.0$"):
        validate_pretraining(config)
    values = bert_config(2, 128).to_dict()
    values["train"]["num_steps"] = 1e5  # as a config file may write it
    with pytest.raises(ValueError, match=r"^config.train.num_steps=100000.0: must be an integer$"):
        validate_pretraining(ml_collections.ConfigDict(values))


@pytest.mark.parametrize("field, value, message", [
    ("train.log_every", "0", "must be >= 1"),
    ("train.checkpoint_every", "0", "must be >= 1"),
    ("train.grad_accum_steps", "0", "must be >= 1"),
    ("train.global_batch_size", "0", "must be >= 1"),
    ("train.global_batch_size", "-8", "must be >= 1"),
    ("train.max_to_keep", "0", "must be >= 1"),
    ("train.num_steps", "0", "must be >= 1"),
    ("train.seed", "-1", "must be >= 0 and <= 4294967295"),
    ("data.mask_prob", "1.5", "must be > 0.0 and < 1.0"),
    ("data.mask_prob", "1.0", "must be > 0.0 and < 1.0"),
    ("model.hidden_dropout", "1.0", "must be >= 0.0 and < 1.0"),
    ("optim.learning_rate", "-0.001", "must be > 0.0"),
    ("mesh.fsdp", "0", "must be >= 1 (or -1)"),
])
def test_bad_config_values_fail_before_any_work(tmp_path, capsys, config_file, field, value, message):
    workdir = tmp_path / "work"
    code, _, err = cli(capsys, "pretrain", "--config", config_file, "--data", tmp_path / "no-data",
                       "--workdir", workdir, f"--config.{field}={value}")
    assert code == 2
    assert one_line_error(err, "pretrain") == f"config.{field}={value}: {message}"
    assert not workdir.exists() and os.listdir(tmp_path) == []  # the missing --data was never read


def test_bad_finetune_values_fail_before_loading_anything(tmp_path, capsys):
    for override, message in [("--config.train.seed=-1", "config.train.seed=-1 (--seed): must be >= 0 and <= 4294967295"),
                              ("--config.model.attention_dropout=1.0",
                               "config.model.attention_dropout=1.0: must be >= 0.0 and < 1.0"),
                              ("--config.mesh.tensor=0", "config.mesh.tensor=0: must be >= 1 (or -1)")]:
        code, _, err = cli(capsys, "finetune", "--init", tmp_path / "none", "--train", tmp_path / "t.tsv",
                           "--eval", tmp_path / "e.tsv", "--workdir", tmp_path / "w", override)
        assert code == 2
        assert one_line_error(err, "finetune") == message
    assert os.listdir(tmp_path) == []


# --- outputs that are not new or empty directories (#20 kind 2) ---

def _make_output(kind: str, root) -> tuple[str, str]:
    """An --output of `kind` and the one-line message expected for it."""
    out = root / "out"
    if kind == "non-empty directory":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
        return out, f"--output {out} is a non-empty directory (1 entries, e.g. 'notes.txt') without {{marker}}; " \
                    f"choose a new or empty directory"
    if kind == "file":
        out.write_text("keep me")
        return out, f"--output {out} is a file, not a directory"
    if kind == "symlink to an empty directory":
        (root / "target").mkdir()
        out.symlink_to(root / "target")
        return out, f"--output {out} is a symbolic link to {root / 'target'}; give a new directory path (not a link)"
    out.symlink_to(root / "missing")
    return out, (f"--output {out} is a symbolic link to {root / 'missing'}, which does not exist; give a new "
                 f"directory path (not a link)")


@pytest.mark.parametrize("kind", ["non-empty directory", "file", "symlink to an empty directory", "dangling symlink"])
@pytest.mark.parametrize("command", ["train-tokenizer", "prepare-data"])
def test_outputs_that_are_not_empty_directories_are_refused_first(tmp_path, capsys, korean_corpus, tokenizer_dir,
                                                                  kind, command):
    out, message = _make_output(kind, tmp_path)
    before = sorted(os.listdir(tmp_path)), snapshot(tmp_path), os.path.islink(out) and os.readlink(out)
    args = ["--input", korean_corpus, "--output", out]
    if command == "prepare-data":
        args += ["--tokenizer", tokenizer_dir, "--quiet"]
    code, _, err = cli(capsys, command, *args)
    assert code == 2
    marker = "metadata.json" if command == "prepare-data" else "bert_jax_tokenizer.json"
    assert one_line_error(err, command) == message.format(marker=marker)
    assert (sorted(os.listdir(tmp_path)), snapshot(tmp_path), os.path.islink(out) and os.readlink(out)) == before


# --- one writer per workdir / output; a dead writer never blocks (#20 kind 1d) ---

def _hold_lock(path: str, flag: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from bert_jax.staging import exclusive_lock\n"
        f"with exclusive_lock({path!r}, {flag!r}):\n"
        "    print('locked', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(TESTS)))
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_in_one_line(tmp_path, capsys, config_file, data, korean_corpus, tokenizer_dir):
    host = socket.gethostname()
    cases = [("pretrain", "--workdir", ["--config", config_file, "--data", data]),
             ("prepare-data", "--output", ["--input", korean_corpus, "--tokenizer", tokenizer_dir, "--quiet"]),
             ("train-tokenizer", "--output", ["--input", korean_corpus, "--vocab-size", "100"])]
    for command, flag, args in cases:
        path = str(tmp_path / command)
        holder = _hold_lock(path, flag)
        try:
            code, _, err = cli(capsys, command, flag, path, *args)
            assert code == 2
            assert one_line_error(err, command) == (
                f"{flag} {path} is in use by pid {holder.pid} on {host} (lock {tmp_path}/.{command}.lock); "
                f"wait for it to finish or choose another path")
            assert not os.path.exists(path)
        finally:
            holder.kill()  # kill -9: the kernel drops the flock with the process
            holder.wait()
        with staging.exclusive_lock(path, flag):
            pass
    assert os.listdir(tmp_path) == []  # the lock files of live holders are removed on exit


# --- kill -9 and full disks while writing outputs (#20 kind 1e) ---

@pytest.mark.parametrize("command", ["train-tokenizer", "prepare-data"])
def test_staging_left_by_kill_9_is_removed_by_the_next_run(tmp_path, capsys, korean_corpus, tokenizer_dir, command):
    out = tmp_path / "out"
    args = ["--input", str(korean_corpus), "--output", str(out)]
    args += ["--tokenizer", tokenizer_dir, "--quiet"] if command == "prepare-data" else ["--vocab-size", "100"]
    process = subprocess.Popen(CLI + [command] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not [n for n in os.listdir(tmp_path) if n.startswith(".out.staging-")] and time.time() < deadline:
        time.sleep(0.002)
    process.kill()
    process.wait()
    left = [n for n in os.listdir(tmp_path) if n.startswith(".out.staging-")]
    assert left == [n for n in left if n.startswith(f".out.staging-{process.pid}.")] and len(left) == 1
    code, _, err = cli(capsys, command, *args)
    assert code == 0
    assert (f"removed {tmp_path / left[0]}: staging directory of process {process.pid}, which is no longer "
            f"running") in err
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_full_disk_during_train_tokenizer_leaves_nothing(tmp_path, korean_corpus):
    out = tmp_path / "tok"
    # Files may not grow past 3 KiB, and SIGXFSZ is ignored, so such writes fail like on a full disk.
    limited = ["bash", "-c", "trap '' XFSZ; ulimit -f 3; exec \"$@\"", "limited"]
    result = subprocess.run(limited + CLI + ["train-tokenizer", "--input", str(korean_corpus), "--output", str(out),
                                             "--vocab-size", "100"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and last.startswith("bert-jax train-tokenizer: error: ")
    assert "tokenizer.json could not be written (File too large (os error 27)): the disk is full" in last
    assert os.listdir(tmp_path) == []  # no truncated spm.model, no staging, no lock file


# --- the prepared data checked against itself; model meets data of its own tokenizer (#20 kind 4, #15 kind 6) ---

def _edited_copy(data: str, root, edit) -> str:
    copy = str(root / "data-copy")
    shutil.copytree(data, copy)
    path = os.path.join(copy, "metadata.json")
    metadata = json.load(open(path))
    edit(copy, metadata)
    json.dump(metadata, open(path, "w"))
    return copy


def test_prepared_data_that_disagrees_with_itself_is_named(tmp_path, data, other_tokenizer):
    def lower_vocab(_, m):
        m["vocab_size"] = 90

    def swap_tokenizer(copy, _):
        shutil.rmtree(os.path.join(copy, "tokenizer"))
        shutil.copytree(other_tokenizer, os.path.join(copy, "tokenizer"))

    def shorter_sequences(_, m):
        m["max_seq_length"] = m["arguments"]["max_seq_length"] = 8

    def edited_length(_, m):
        m["max_seq_length"] = 64

    fingerprints = {json.load(open(os.path.join(data, "metadata.json")))["tokenizer"]["fingerprint"]}
    cases = [(lower_vocab, "{d}/metadata.json says vocab_size=90 but {d}/tokenizer has 100 tokens; the two do not "
                           "belong together"),
             (swap_tokenizer, "{d}/tokenizer (fingerprint {other}) is not the tokenizer the shards were made with "
                              "(fingerprint {ours} in {d}/metadata.json); restore it or prepare the data again"),
             (shorter_sequences, "shard {d}/train-00000-of-00002.tfrecord holds examples of 32 tokens but "
                                 "metadata.json says max_seq_length=8: the metadata does not belong to these shards"),
             (edited_length, "{d}/metadata.json: max_seq_length=64 but the data was prepared with max_seq_length=32 "
                             "(its 'arguments'); the file was edited")]
    from bert_jax.data import tokenizer

    other = tokenizer.load(other_tokenizer).fingerprint
    for edit, message in cases:
        copy = _edited_copy(data, tmp_path, edit)
        metadata = json.load(open(os.path.join(copy, "metadata.json")))
        config = tiny_config()
        config.data.max_seq_length = metadata["max_seq_length"]
        with pytest.raises(ValueError) as error:
            train_and_evaluate(config, copy, str(tmp_path / "work"))
        assert str(error.value) == message.format(d=copy, other=other, ours=next(iter(fingerprints)))
        assert not (tmp_path / "work").exists()
        shutil.rmtree(copy)


def test_evaluate_and_fill_mask_refuse_another_tokenizer(tmp_path, capsys, finished, korean_corpus, other_tokenizer):
    other_data = str(tmp_path / "other-data")
    prepare_data([str(korean_corpus)], other_tokenizer, other_data,
                 DataSettings(max_seq_length=32, max_predictions_per_seq=5, eval_fraction=0.1, num_shards=2),
                 progress=False)
    code, out, err = cli(capsys, "evaluate", "--workdir", finished, "--data", other_data)
    assert code == 2 and out == ""
    assert one_line_error(err, "evaluate").startswith(f"--data {other_data} was prepared with a different tokenizer")
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished, workdir)
    shutil.rmtree(os.path.join(workdir, "tokenizer"))
    shutil.copytree(other_tokenizer, os.path.join(workdir, "tokenizer"))
    code, _, err = cli(capsys, "fill-mask", "--model", workdir, "서울[MASK] 한국의 도시이다.")
    assert code == 2
    assert "tokenizer (fingerprint" in err and "is not the tokenizer the model was trained with" in err


# --- resuming: other model sizes and silent config changes are refused, the workdir kept (#20 1a, #15 kind 7) ---

@pytest.mark.parametrize("overrides, message", [
    (["--config.model.hidden_size=64"],
     "the checkpoint is L1/H32/A2/FF64/V100 (model.hidden_size=32), the config asks for L1/H64/A2/FF64/V100 "
     "(model.hidden_size=64); use the saved config or a new --workdir"),
    (["--config.train.global_batch_size=32"],
     "resuming at step 8 with changed config.train.global_batch_size (16 -> 32) would change the data stream "
     "(skipped, repeated or differently masked examples); keep the saved values or use a new --workdir"),
    (["--config.train.seed=1", "--config.data.shuffle_buffer=32"],
     "resuming at step 8 with changed config.data.shuffle_buffer (64 -> 32), config.train.seed (0 -> 1) would "
     "change the data stream (skipped, repeated or differently masked examples); keep the saved values or use a "
     "new --workdir"),
    (["--config.train.num_steps=12"],
     "resuming at step 8 with changed config.train.num_steps (8 -> 12) rebuilds the learning-rate schedule; "
     "pass --allow-change train.num_steps to do so deliberately"),
    (["--config.train.num_steps=6", "--allow-change", "train.num_steps"],
     "config.train.num_steps=6 but the checkpoint is already at step 8"),
    (["--allow-change", "data.mask_prob"],
     "--allow-change data.mask_prob: only schedule fields may change on resume: train.num_steps, "
     "optim.learning_rate, optim.warmup_steps, optim.schedule, optim.end_lr_factor, optim.weight_decay, "
     "optim.b1, optim.b2, optim.eps, optim.grad_clip_norm"),
])
def test_resume_refuses_changes_and_keeps_the_workdir(capsys, finished, data, config_file, overrides, message):
    before = snapshot(finished)
    code, _, err = cli(capsys, "pretrain", "--config", config_file, "--data", data, "--workdir", finished, *overrides)
    assert code == 2
    assert one_line_error(err, "pretrain") == message
    assert snapshot(finished) == before  # config.json and every checkpoint byte-for-byte


def test_allowed_changes_continue_and_are_noted(tmp_path, capsys, finished, data, config_file):
    workdir = str(tmp_path / "work")
    shutil.copytree(finished, workdir)
    checkpoints = snapshot(os.path.join(workdir, "checkpoints"))
    code, out, _ = cli(capsys, "pretrain", "--config", config_file, "--data", data, "--workdir", workdir)
    assert code == 0  # rerunning a finished run keeps its checkpoints
    assert snapshot(os.path.join(workdir, "checkpoints")) == checkpoints
    code, out, _ = cli(capsys, "pretrain", "--config", config_file, "--data", data, "--workdir", workdir,
                       "--config.train.num_steps=10", "--allow-change", "config.train.num_steps",
                       "--config.train.log_every=5")
    assert code == 0
    assert "resuming at step 8 with changed settings: train.log_every 1 -> 5; train.num_steps 8 -> 10" in out
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["6", "8", "10"]
    assert json.load(open(os.path.join(workdir, "config.json")))["train"]["num_steps"] == 10


# --- kill -9 at random points, also inside a save: the rerun ends exactly like an uninterrupted run ---

def _wait_and_kill(process: subprocess.Popen, workdir: str, point: tuple[str, int]) -> str:
    """Kills `process` with SIGKILL once `point` is reached: ('step', k) after k more logged steps,
    or ('save', k) while the k-th checkpoint of this process is being written. Returns what was hit."""
    kind, k = point
    checkpoints, metrics = os.path.join(workdir, "checkpoints"), os.path.join(workdir, "metrics.jsonl")
    k += len(open(metrics).readlines()) if kind == "step" and os.path.exists(metrics) else 0  # earlier runs' rows
    saves = set()
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        if kind == "save" and os.path.isdir(checkpoints):
            saves |= {n.split(".")[0] for n in os.listdir(checkpoints) if "tmp" in n}
            if len(saves) >= k:
                process.kill()
                return f"inside the save of step {max(saves, key=int)}"
        if kind == "step" and os.path.exists(metrics) and len(open(metrics).readlines()) >= k:
            process.kill()
            return f"after step {k}"
        time.sleep(0.001)
    process.kill()
    return "finished"


def _last_rows(workdir: str) -> dict[tuple, dict]:
    """Per (step, train or eval), the last metrics row written (a killed run's rows past its
    checkpoint are written again by the rerun)."""
    rows = {}
    for row in read_metrics(workdir):
        kind = "eval" if any(k.startswith("eval/") for k in row) else "train"
        rows[row["step"], kind] = {k: v for k, v in row.items() if not k.startswith("perf/")}
    return rows


def test_kill_9_at_random_points_resumes_to_the_uninterrupted_result(tmp_path, capsys, finished, data, config_file):
    workdir = str(tmp_path / "killed")
    command = CLI + ["pretrain", "--config", config_file, "--data", data, "--workdir", workdir]
    rng = random.Random(20)
    points = [("save", rng.randint(1, 2)), ("step", rng.randint(1, 4))]
    hits = []
    for point in points:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=SUBPROCESS_ENV)
        hits.append(_wait_and_kill(process, workdir, point))
        process.wait()
    code, out, _ = cli(capsys, "pretrain", "--config", config_file, "--data", data, "--workdir", workdir)
    assert code == 0, hits
    assert hits[0].startswith("inside the save of step"), hits
    assert _last_rows(workdir) == _last_rows(finished)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["4", "6", "8"]
    mesh = json.load(open(os.path.join(workdir, "config.json")))["mesh"]
    assert {axis: mesh[axis] for axis in ("data", "fsdp", "tensor")} == {"data": 1, "fsdp": 8, "tensor": 1}


# --- the CLI end to end on 8 fake devices with a 3-axis mesh (fsdp=8: every run above) (#20 kind 1c) ---

def test_cli_pretrain_on_eight_devices_with_a_three_axis_mesh(tmp_path, capsys, data, config_file):
    workdir = tmp_path / "work"
    code, out, _ = cli(capsys, "pretrain", "--config", config_file, "--data", data, "--workdir", workdir,
                       "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                       "--config.train.num_steps=4", "--config.train.eval_every=2")
    assert code == 0
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in out
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["2", "4"]
    assert [r["step"] for r in read_metrics(str(workdir)) if "eval/mlm_loss" in r] == [2, 4]


def test_the_finiteness_check_is_one_program_over_sharded_parameters():
    """Run op by op, each leaf's reduction was a program with its own all-reduce; dozens in flight
    at once deadlocked XLA:CPU's in-process collectives on 8 loaded devices (exit 134)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bert_jax.training.train_step import all_finite

    mesh = jax.make_mesh((8,), ("fsdp",))
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    tree = {"a": jax.device_put(jnp.ones((16, 4)), sharded), "b": jax.device_put(jnp.arange(8.0), sharded)}
    assert "all-reduce" in all_finite.lower(tree).compile().as_text()  # one module holds the reduction
    assert bool(all_finite(tree))
    tree["b"] = jax.device_put(jnp.asarray(np.r_[np.arange(7.0), np.inf]), sharded)
    assert not bool(all_finite(tree))
