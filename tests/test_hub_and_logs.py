"""Progress bars that count finished steps (pretrain, fine-tune, export-hf), the resolved config as
TensorBoard hparams, fine-tuning from a `datasets.Dataset`, export-hf to a URL, shell completion."""

import json
import os
import subprocess
import sys

import datasets
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from test_finetune import _config, _toy
from test_pretrain import tiny_config

from bert_jax import metrics_log, progress
from bert_jax.cli import main
from bert_jax.training.finetune import Classifier, finetune
from bert_jax.training.train import train_and_evaluate

EXPORTED = "bert-ko-tiny"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sharded_workdirs):
    """A tiny pretraining (4 steps, log_every 2) on the data of conftest's `sharded_workdirs`, and a
    fine-tuning of their fsdp8 model from `datasets.Dataset`s with int labels (10 steps an epoch,
    log_every 2), with every bar update ('bar', desc, count) and every logged row ('log', step,
    metric names) recorded in order."""
    root = tmp_path_factory.mktemp("hub_and_logs")
    data = os.path.join(os.path.dirname(sharded_workdirs["fsdp8"]), "data")
    events = []
    bar_factory, write = progress.progress_bar, metrics_log.MetricsLogger.write

    def recording_bar(*args, **kwargs):
        bar = bar_factory(*args, **kwargs)
        update = bar.update

        def recorded(n=1):
            update(n)
            events.append(("bar", bar.desc, bar.n))

        bar.update = recorded
        return bar

    def recording_write(self, step, metrics):
        events.append(("log", step, sorted(metrics)))
        write(self, step, metrics)

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["부정", "긍정"])})

    def dataset(seed, n):
        rows = _toy(seed, n)
        return datasets.Dataset.from_dict({"text": [r[0] for r in rows],
                                           "label": [int(r[2] == "긍정") for r in rows]}, features=features)

    splits = {"train": dataset(0, 160), "eval": dataset(1, 40)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(progress, "progress_bar", recording_bar)
        patch.setattr(metrics_log.MetricsLogger, "write", recording_write)
        train_and_evaluate(tiny_config(num_steps=4, log_every=2, eval_every=0), data, str(root / "pre"))
        pretrain_events = list(events)
        events.clear()
        result = finetune(sharded_workdirs["fsdp8"], splits["train"], splits["eval"], str(root / "ft"),
                          config=_config(epochs=3, learning_rate=1e-2, patience=2))
    return {"root": root, "pretrain": pretrain_events, "finetune": events, "result": result, "splits": splits}


def _bar_and_train_rows(events, desc, train_metric):
    """The updates of the bar `desc` and the logged rows holding `train_metric`, in order."""
    return [e if e[0] == "bar" else ("log", e[1]) for e in events
            if (e[0] == "bar" and e[1] == desc) or (e[0] == "log" and train_metric in e[2])]


def test_pretraining_bar_counts_the_steps_whose_metrics_came_back(runs):
    """The bar moves only when a step's metrics are fetched (which waits for the device), to that
    step: a bar advanced at dispatch would show 1 before step 2's metrics exist."""
    assert _bar_and_train_rows(runs["pretrain"], "", "train/mlm_loss") == [
        ("bar", "", 2), ("log", 2), ("bar", "", 4), ("log", 4)]


def test_fine_tuning_bar_counts_the_steps_whose_metrics_came_back(runs):
    rows = _bar_and_train_rows(runs["finetune"], "fine-tune", "train/loss")
    last = runs["result"]["history"][-1]["step"]  # 10 steps an epoch, all logged (log_every 2)
    assert last == 30 and rows == [
        entry for step in range(2, last + 1, 2) for entry in (("bar", "fine-tune", step), ("log", step))]


def test_fine_tuning_from_a_datasets_dataset_keeps_int_labels(runs):
    result, evaluation = runs["result"], runs["splits"]["eval"]
    assert result["labels"] == [0, 1] and all(type(label) is int for label in result["labels"])
    assert result["best"]["eval_accuracy"] >= 0.9
    predicted, probabilities = Classifier(str(runs["root"] / "ft")).predict(evaluation["text"])
    assert all(type(label) is int for label in predicted) and probabilities.shape == (40, 2)
    correct = sum(p == gold for p, gold in zip(predicted, evaluation["label"]))
    assert correct / 40 == pytest.approx(result["best"]["eval_accuracy"])


def _hparams(directory):
    events = EventAccumulator(directory)
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
    return info.group_name, values, events


def test_the_resolved_config_is_recorded_as_hparams_next_to_readable_scalars(runs):
    workdir = runs["root"] / "pre"
    run, values, events = _hparams(str(workdir / "tensorboard"))
    config = json.loads((workdir / "config.json").read_text())
    assert run == "pre" and values["train.num_steps"] == 4 == config["train"]["num_steps"]
    assert values["optim.learning_rate"] == pytest.approx(3e-3) and values["model.hidden_size"] == 32
    assert len(values) == len(metrics_log.hparams(config)) > 20
    assert [e.step for e in events.Scalars("train/mlm_loss")] == [2, 4]


def test_hparams_flatten_nested_fields_and_keep_their_types(tmp_path):
    config = {"model": {"num_layers": 2, "vocab_size": None}, "optim": {"learning_rate": 1e-3},
              "data": {"inputs": ["a.txt", "b.txt"]}, "resume": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    metrics_log.MetricsLogger(str(tmp_path), print_fn=lambda line: None).write(1, {"train/mlm_loss": 2.0})
    run, values, events = _hparams(str(tmp_path / "tensorboard"))
    assert run == tmp_path.name
    assert values == {"model.num_layers": 2.0, "model.vocab_size": "null", "optim.learning_rate": 1e-3,
                      "data.inputs": '["a.txt", "b.txt"]', "resume": True}
    assert [(e.step, e.value) for e in events.Scalars("train/mlm_loss")] == [(1, 2.0)]


def _files(directory, listdir, read):
    """{name: bytes} of the files in `directory` (an export has no subdirectories)."""
    return {name: read(os.path.join(directory, name)) for name in listdir(directory)}


def test_export_to_a_url_equals_the_local_export_and_shows_a_bar(runs, tmp_path, capsys, monkeypatch):
    """export-hf --output ram://... (any tf.io.gfile file system) uploads what a local export writes,
    config.json last; both show a bar of finished stages; a second export there is refused."""
    monkeypatch.setattr(progress, "DELAY_S", 0.0)  # a tiny export takes less than the bar's delay
    workdir, remote = str(runs["root"] / "pre"), f"ram://export-{os.getpid()}/{EXPORTED}"
    assert main(["export-hf", "--model", workdir, "--output", str(tmp_path / EXPORTED)]) == 0
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert [line.split("|")[0] for line in lines if line.startswith("export-hf:")][-1] == "export-hf: 100%"
    assert any("| 4/4 [" in line and "tokenizer and card" in line for line in lines)
    local = _files(str(tmp_path / EXPORTED), os.listdir, lambda path: open(path, "rb").read())
    assert main(["export-hf", "--model", workdir, "--output", remote]) == 0
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "| 5/5 [" in err and "uploaded" in err
    assert _files(remote, tf.io.gfile.listdir, lambda path: tf.io.gfile.GFile(path, "rb").read()) == local
    assert "max_position_embeddings" in json.loads(local["config.json"])
    assert main(["export-hf", "--model", workdir, "--output", remote]) == 2
    assert capsys.readouterr().err.strip() == (f"bert-jax export-hf: error: --output {remote} already holds a "
                                               f"model; choose another directory")


def test_bash_completion_completes_commands_and_flags():
    script = subprocess.run([sys.executable, "-m", "bert_jax.cli", "--print-completion", "bash"],
                            capture_output=True, text=True, check=True).stdout

    def complete(*words):
        probe = (f'{script}\nCOMP_WORDS=({" ".join(words)}); COMP_CWORD={len(words) - 1}; '
                 f'_shtab_bert_jax; printf "%s\\n" "${{COMPREPLY[@]}}"')
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    assert complete("bert-jax", "ex") == ["export-hf"]
    assert complete("bert-jax", "export-hf", "--ke") == ["--keep-positions"]
    assert complete("bert-jax", "prepare-data", "--pair-task", "s") == ["sop"]


def test_completion_without_shtab_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "shtab", None)  # import shtab raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["--print-completion", "zsh"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "bert-jax: error: --print-completion needs shtab: pip install 'bert_jax[completion]' (or shtab)")
