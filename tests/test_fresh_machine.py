"""A fresh machine: every command with relative paths from another current directory, remote
(non-local) paths through TensorFlow's ram:// file system, a failed checkpoint save that stops
the run at once, restarts that do not duplicate logs, and configs that ship with the package."""

import json
import os
import shutil
import subprocess

import pytest
import tensorflow as tf
from conftest import make_korean_corpus

from bert_jax.cli import main
from bert_jax.data import tokenizer
from bert_jax.inference import pretrained
from bert_jax.metrics_log import MetricsLogger, plot_curves, read_metrics

TINY_CONFIG = '''
from bert_jax.config.defaults import bert_config


def get_config():
    config = bert_config(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64,
                         max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
    config.data.update(max_seq_length=32, max_predictions_per_seq=5, shuffle_buffer=64)
    config.train.update(global_batch_size=16, num_steps=4, log_every=2, eval_every=0, eval_steps=2,
                        checkpoint_every=2)
    config.optim.update(learning_rate=3e-3, warmup_steps=2)
    return config
'''
PREPARE = ["--max-seq-length", "32", "--max-predictions-per-seq", "5", "--num-shards", "2", "--workers", "1",
           "--eval-fraction", "0.1", "--quiet"]


def _table(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("text\tlabel\n")
        f.writelines(f"{text}\t{label}\n" for text, label in rows)


def _run(*argv):
    assert main(list(argv)) == 0, argv


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
    """Every command run from a fresh current directory with relative paths only."""
    cwd = tmp_path_factory.mktemp("fresh")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        make_korean_corpus(cwd / "ko.txt")
        (cwd / "tiny.py").write_text(TINY_CONFIG)
        _table("train.tsv", [(f"문장 {i} 좋다.", "긍정") if i % 2 else (f"문장 {i} 없다.", "부정") for i in range(32)])
        _table("eval.tsv", [("학교는 좋다.", "긍정"), ("학교는 없다.", "부정")] * 4)
        _run("train-tokenizer", "--input", "ko.txt", "--output", "tok", "--vocab-size", "100")
        _run("prepare-data", "--input", "ko.txt", "--tokenizer", "tok", "--output", "data", *PREPARE)
        _run("pretrain", "--config", "tiny.py", "--data", "data", "--workdir", "run")
        _run("pretrain", "--config", "tiny.py", "--data", "data", "--workdir", "run", "--config.train.num_steps=8",
             "--allow-change", "train.num_steps")
        # a crash after step 8 was logged but before its checkpoint: the rerun resumes from 6
        shutil.rmtree("run/checkpoints/8")
        _run("pretrain", "--config", "tiny.py", "--data", "data", "--workdir", "run", "--config.train.num_steps=8",
             "--allow-change", "train.num_steps")
        _run("evaluate", "--workdir", "run", "--data", "data", "--eval-steps", "1")
        _run("fill-mask", "--model", "run", "학교는 [MASK] 좋다.")
        _run("export-hf", "--workdir", "run", "--output", "hf")
        _run("import-hf", "--input", "hf", "--output", "imported")
        finetune = ["finetune", "--init", "run", "--train", "train.tsv", "--eval", "eval.tsv", "--workdir", "ft",
                    "--epochs", "1", "--batch-size", "8", "--max-length", "16"]
        _run(*finetune)
        _run(*finetune)  # resumes from the finished run's last checkpoint
        _run("predict", "--model", "ft", "--input", "eval.tsv", "--output", "predictions.jsonl")
        _run("demo", "--steps", "2")  # the README's first command: the default --workdir runs/demo
        _run("demo", "--steps", "3")  # re-running the demo with more steps continues the same run
        loaded = pretrained.load("run")
        yield cwd, loaded
    finally:
        os.chdir(old)


def test_every_command_works_with_relative_paths(relative_run):
    cwd, loaded = relative_run
    assert loaded.step == 8 and loaded.tokenizer.vocab_size == 100
    for path in ("tok/tokenizer.json", "data/metadata.json", "run/checkpoints/8", "hf/model.safetensors",
                 "imported/tokenizer/tokenizer.json", "ft/model.safetensors", "runs/demo/model/checkpoints/3",
                 "runs/demo/model/curves.png"):
        assert (cwd / path).exists(), path
    assert len((cwd / "predictions.jsonl").read_text().splitlines()) == 8
    config = json.loads((cwd / "run" / "config.json").read_text())
    assert config["data_dir"] == str(cwd / "data")  # stored absolute, not relative to the cwd of the run


def test_a_resumed_run_logs_every_step_once(relative_run):
    cwd, _ = relative_run
    rows = read_metrics(str(cwd / "run"))
    train_steps = [r["step"] for r in rows if "train/mlm_loss" in r]
    assert train_steps == [2, 4, 6, 8]  # step 8 logged by the crashed run was superseded, not appended
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(cwd / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/mlm_loss")] == train_steps
    assert [e.step for e in events.Scalars("eval/mlm_loss")] == [r["step"] for r in rows if "eval/mlm_loss" in r]


def test_packaged_configs_load_by_name_from_any_directory(tmp_path, monkeypatch):
    from bert_jax.config.loading import load_config

    monkeypatch.chdir(tmp_path)
    assert load_config("base").model.num_layers == 12
    assert load_config("demo", ["--config.train.num_steps=5"]).train.num_steps == 5
    with pytest.raises(FileNotFoundError, match="--config huge: neither a file nor a packaged config"):
        load_config("huge")


def _ram(path):
    return "ram://fresh-machine/" + path


def test_remote_tokenizer_data_and_logs(tmp_path, korean_corpus, monkeypatch):
    """Tokenizer, prepare-data and logs on a non-local file system (TensorFlow's ram://) give what
    the same commands give locally; a checkpoint workdir there is a one-line error."""
    tf.io.gfile.makedirs(_ram(""))
    tf.io.gfile.copy(str(korean_corpus), _ram("ko.txt"), overwrite=True)
    _run("train-tokenizer", "--input", _ram("*.txt"), "--output", _ram("tok"), "--vocab-size", "100")
    _run("train-tokenizer", "--input", str(korean_corpus), "--output", str(tmp_path / "tok"), "--vocab-size", "100")
    remote, local = tokenizer.load(_ram("tok")), tokenizer.load(str(tmp_path / "tok"))
    assert remote.fingerprint == local.fingerprint and remote.model_type == "unigram"
    assert remote.encode("학교는 도시에서 좋다.") == local.encode("학교는 도시에서 좋다.")

    _run("prepare-data", "--input", _ram("ko.txt"), "--tokenizer", _ram("tok"), "--output", _ram("data"), *PREPARE)
    _run("prepare-data", "--input", str(korean_corpus), "--tokenizer", str(tmp_path / "tok"), "--output",
         str(tmp_path / "data"), *PREPARE)
    remote_meta = json.loads(tf.io.gfile.GFile(_ram("data/metadata.json")).read())
    local_meta = json.loads((tmp_path / "data" / "metadata.json").read_text())
    assert remote_meta["splits"] == local_meta["splits"] and remote_meta["summary"]["examples"] > 0
    for entry in local_meta["splits"]["train"]["files"]:
        remote_bytes = tf.io.gfile.GFile(_ram("data/" + entry["name"]), "rb").read()
        assert remote_bytes == (tmp_path / "data" / entry["name"]).read_bytes()
    assert sorted(tf.io.gfile.listdir(_ram("data/tokenizer"))) == sorted(os.listdir(tmp_path / "data" / "tokenizer"))

    (tmp_path / "tiny.py").write_text(TINY_CONFIG)  # pretraining reads its data from ram://
    _run("pretrain", "--config", str(tmp_path / "tiny.py"), "--data", _ram("data"), "--workdir",
         str(tmp_path / "run"))
    assert read_metrics(str(tmp_path / "run"))[-1]["step"] == 4

    logger = MetricsLogger(_ram("logs"))  # logs, their resume and curves.png on ram://
    for step in (1, 2, 3):
        logger.write(step, {"train/mlm_loss": float(step)})
    MetricsLogger(_ram("logs"), start_step=2)
    assert [r["step"] for r in read_metrics(_ram("logs"))] == [1, 2]
    assert tf.io.gfile.GFile(plot_curves(_ram("logs")), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_orbax_on_an_unsupported_file_system_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "tiny.py").write_text(TINY_CONFIG)
    assert main(["pretrain", "--config", str(tmp_path / "tiny.py"), "--data", str(tmp_path), "--workdir",
                 _ram("run")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"bert-jax pretrain: error: {_ram('run')}: orbax checkpoints can be written to local "
                           f"directories and gs:// only, not ram://")
    assert not tf.io.gfile.exists(_ram("run"))


def _chattr(flag, path):
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_a_failed_save_stops_the_run_at_once_and_keeps_the_good_checkpoint(tmp_path, korean_corpus, tokenizer_dir, capsys):
    data, workdir = tmp_path / "data", tmp_path / "run"
    _run("prepare-data", "--input", str(korean_corpus), "--tokenizer", tokenizer_dir,
         "--output", str(data), *PREPARE)
    (tmp_path / "tiny.py").write_text(TINY_CONFIG)
    config = ["--config", str(tmp_path / "tiny.py"), "--data", str(data), "--workdir", str(workdir),
              "--config.train.log_every=1", "--config.optim.warmup_steps=1"]
    _run("pretrain", *config, "--config.train.num_steps=2")
    checkpoints = workdir / "checkpoints"
    # Root writes through permissions, not through the immutable attribute: nothing can be created in it.
    if shutil.which("chattr") is None or not _chattr("+i", checkpoints):
        pytest.skip("chattr +i is not available on this file system")
    try:
        capsys.readouterr()
        status = main(["pretrain", *config, "--config.train.num_steps=40", "--allow-change", "train.num_steps"])
    finally:
        _chattr("-i", checkpoints)
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert status == 1
    assert err.startswith(f"bert-jax pretrain: error: the checkpoint of step 4 in {checkpoints} could not be "
                          f"written: PermissionError")
    assert max(r["step"] for r in read_metrics(str(workdir))) == 4  # stopped at the failed save
    assert sorted(os.listdir(checkpoints)) == ["2"]
    assert pretrained.load(str(workdir)).step == 2
    assert main(["evaluate", "--workdir", str(workdir), "--data", str(data), "--eval-steps", "1"]) == 0


def test_a_log_line_cut_short_by_a_kill_is_superseded(tmp_path):
    logger = MetricsLogger(str(tmp_path))
    for step in (1, 2):
        logger.write(step, {"train/mlm_loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train/ml')  # killed in the middle of a write
    MetricsLogger(str(tmp_path), start_step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == ('{"step": 1, "train/mlm_loss": 1.0}\n'
                                                        '{"step": 2, "train/mlm_loss": 2.0}\n')


def test_local_paths_become_absolute_and_urls_pass_untouched(tmp_path, monkeypatch):
    from bert_jax import fs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fs.absolute("runs/demo") == str(tmp_path / "runs" / "demo")
    assert fs.absolute("~/data") == str(tmp_path / "home" / "data")
    for url in ("gs://bucket/runs/base", "ram://x/y", "tfds:wikipedia/20230601.ko"):
        assert fs.absolute(url) == url
    assert fs.checkpoint_directory("gs://bucket/runs/base") == "gs://bucket/runs/base"
    assert fs.checkpoint_directory("w") == str(tmp_path / "w")
