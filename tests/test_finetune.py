"""Fine-tuning: a separable toy task, save -> load -> predict, pairs use segment ids, the mesh,
exact resume after SIGTERM, logs, bad input."""

import json
import os
import random
import signal

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from test_pretrain import pretrain_tiny

from bert_jax.cli import main
from bert_jax.config.defaults import finetune_config
from bert_jax.data.finetune_data import encode, read_table
from bert_jax.inference import pretrained
from bert_jax.training import finetune as finetune_lib
from bert_jax.training.finetune import Classifier, finetune

NOUNS = ["서울", "부산", "학교", "도서관", "정부", "국회", "시민", "역사", "문화", "바다", "도시", "마을"]


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("text\ttopic\tlabel\n")
        f.writelines(f"{t}\t{p}\t{l}\n" for t, p, l in rows)


def _toy(seed, n):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        noun, good = rng.choice(NOUNS), rng.random() < 0.5
        rows.append((f"{noun}은 {rng.choice(NOUNS)}의 {'좋다' if good else '없다'}.", rng.choice(NOUNS),
                     "긍정" if good else "부정"))
    return rows


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory, korean_corpus, tokenizer_dir):
    root = tmp_path_factory.mktemp("ft")
    pretrain_tiny(root, korean_corpus, tokenizer_dir, "pre")
    _write(root / "train.tsv", _toy(0, 160))
    _write(root / "eval.tsv", _toy(1, 40))
    return root


def test_learns_a_separable_task_and_predicts_after_reload(setup_dirs, capsys):
    root = setup_dirs
    assert main(["finetune", "--init", str(root / "pre"), "--train", str(root / "train.tsv"), "--eval",
                 str(root / "eval.tsv"), "--workdir", str(root / "ft"), "--epochs", "10", "--patience", "2",
                 "--learning-rate", "1e-2", "--batch-size", "16", "--max-length", "24"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["labels"] == ["긍정", "부정"] and result["best"]["eval_accuracy"] >= 0.95
    assert len([line for line in lines if line.startswith('{"epoch"')]) < 10  # early stopping
    assert result["best"]["eval_macro_f1"] >= 0.95
    assert sorted(os.listdir(root / "ft")) == ["checkpoints", "config.json", "curves.png", "finetune.json",
                                               "metrics.jsonl", "model.safetensors", "tensorboard", "tokenizer"]
    logged = [json.loads(line) for line in open(root / "ft" / "metrics.jsonl")]
    assert {"train/loss", "train/accuracy", "train/learning_rate"} <= set(logged[0])
    assert max(r["eval/accuracy"] for r in logged if "eval/accuracy" in r) == result["best"]["eval_accuracy"]
    classifier = Classifier(str(root / "ft"))
    texts = ["서울은 학교의 좋다.", "부산은 바다의 없다."]
    names, probabilities = classifier.predict(texts)
    assert names == ["긍정", "부정"] and np.allclose(probabilities.sum(-1), 1)
    again = Classifier(str(root / "ft")).predict(texts)[1]
    np.testing.assert_array_equal(probabilities, again)
    (root / "in.tsv").write_text("text\n" + "\n".join(texts) + "\n", encoding="utf-8")
    assert main(["predict", "--model", str(root / "ft"), "--input", str(root / "in.tsv"), "--output",
                 str(root / "out.jsonl")]) == 0
    lines = [json.loads(l) for l in open(root / "out.jsonl", encoding="utf-8")]
    assert [l["label"] for l in lines] == names
    np.testing.assert_allclose([l["probabilities"]["긍정"] for l in lines], probabilities[:, 0], rtol=1e-6)


def test_pairs_get_segment_ids_and_long_texts_are_truncated(setup_dirs):
    tok = pretrained.load(str(setup_dirs / "pre")).tokenizer
    rows = [{"a": "서울은 학교의 좋다.", "b": "부산은 바다의 없다.", "y": "1"}, {"a": "서울 " * 40, "b": "학교", "y": "0"}]
    examples = encode(rows, tok, "a", "b", 24, ["0", "1"], "y")
    first = examples.segment_ids[0][examples.input_mask[0] == 1]
    n_a = len(tok.encode(rows[0]["a"]))
    assert list(first) == [0] * (n_a + 2) + [1] * (len(first) - n_a - 2) and first[-1] == 1
    assert examples.truncated == 1 and examples.input_mask[1].sum() == 24
    assert list(examples.labels) == [1, 0]


def test_bad_inputs(setup_dirs, tmp_path, capsys):
    root = setup_dirs
    args = ["finetune", "--init", str(root / "pre"), "--eval", str(root / "eval.tsv"), "--workdir", str(tmp_path / "w")]
    assert main(args + ["--train", str(root / "train.tsv"), "--label-column", "sentiment"]) == 2
    assert "unknown column(s) ['sentiment']" in capsys.readouterr().err
    (tmp_path / "empty.tsv").write_text("text\tlabel\n")
    assert main(args + ["--train", str(tmp_path / "empty.tsv")]) == 2
    assert "no rows" in capsys.readouterr().err
    _write(tmp_path / "odd.tsv", [("서울은 좋다.", "x", "중립")])
    with pytest.raises(ValueError, match="odd.tsv: line 2: label '중립' is not one of the labels \\['긍정', '부정'\\]"):
        finetune(str(root / "pre"), str(root / "train.tsv"), str(tmp_path / "odd.tsv"), str(tmp_path / "w"),
                 "text", "label", config=_config())
    assert main(args + ["--train", str(root / "train.tsv")]) == 2
    assert "max_length=128 (--max-length) exceeds the model's max_position_embeddings=32" in capsys.readouterr().err
    assert main(args + ["--train", str(root / "train.tsv"), "--batch-size", "12", "--max-length", "24"]) == 2
    assert "global_batch_size=12 (--batch-size) is not divisible by the data-parallel size 8" in capsys.readouterr().err
    assert main(args + ["--train", str(root / "train.tsv"), "--config.train.epoch=2"]) == 2
    assert "--config.train.epoch: unknown field" in capsys.readouterr().err
    assert main(args + ["--train", str(root / "train.tsv"), "--task", "pair-classification"]) == 2
    assert "needs --text-pair-column" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "--input", str(root / "eval.tsv"), "--output", "x"]) == 2
    assert "not a `bert-jax finetune` output" in capsys.readouterr().err


def _config(**train):
    config = finetune_config()
    config.train.update(dict(max_length=24, global_batch_size=16, epochs=1, log_every=2) | train)
    return config


def _run(root, workdir, config):
    return finetune(str(root / "pre"), str(root / "train.tsv"), str(root / "eval.tsv"), str(workdir), "text",
                    "label", config=config)


def test_from_scratch_keeps_architecture_but_not_weights(setup_dirs, tmp_path):
    root = setup_dirs
    _run(root, tmp_path / "scratch", _config(learning_rate=1e-9, from_scratch=True))
    _run(root, tmp_path / "warm", _config(learning_rate=1e-9))
    pre = pretrained.load(str(root / "pre")).params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    scratch = Classifier(str(tmp_path / "scratch")).params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    warm = Classifier(str(tmp_path / "warm")).params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert scratch.shape == pre.shape
    np.testing.assert_allclose(warm, pre, atol=1e-6)  # learning rate ~0: the pretrained weights remain
    assert np.abs(scratch - pre).max() > 1e-2


def test_tsv_texts_may_hold_quotes_and_carriage_returns(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_bytes('id\tdocument\tlabel\n1\t"인용" 시작\t1\n2\t줄\r바꿈\t0\n3\t짧은\n'.encode())
    with pytest.raises(ValueError, match="line 4: 2 fields where the header has 3 \\(id, document, label\\)"):
        read_table(str(path), ["document", "label"])
    path.write_bytes('id\tdocument\tlabel\r\n1\t"인용" 시작\t1\r\n2\t줄\r바꿈\t0\r\n'.encode())
    rows = read_table(str(path), ["document", "label"]).rows
    assert [(r["document"], r["label"]) for r in rows] == [('"인용" 시작', "1"), ("줄\r바꿈", "0")]


def test_mesh_layouts_give_the_same_run(setup_dirs, tmp_path):
    root = setup_dirs
    histories = []
    for name, mesh in (("data", dict(data=8, fsdp=1, tensor=1)), ("mixed", dict(data=2, fsdp=2, tensor=2))):
        config = _config(epochs=2, learning_rate=1e-3)
        config.mesh.update(mesh)
        histories.append(_run(root, tmp_path / name, config)["history"])
        losses = [r["train/loss"] for r in map(json.loads, open(tmp_path / name / "metrics.jsonl")) if "train/loss" in r]
        histories[-1].append(losses)
    np.testing.assert_allclose(histories[0][-1], histories[1][-1], rtol=1e-5)  # dropout on, same masks
    for a, b in zip(histories[0][:-1], histories[1][:-1]):
        assert a["eval_accuracy"] == b["eval_accuracy"] and a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-5)


def test_sigterm_saves_and_the_rerun_continues_exactly(setup_dirs, tmp_path, monkeypatch):
    root = setup_dirs
    config = _config(epochs=2, checkpoint_every=1000)
    reference = _run(root, tmp_path / "reference", config)
    original, calls = finetune_lib._global_batch, []

    def batch_then_sigterm(*args):
        calls.append(1)
        if len(calls) == 16:  # train step 13 of 20 (after 10 train and 3 eval batches): mid-epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args)

    monkeypatch.setattr(finetune_lib, "_global_batch", batch_then_sigterm)
    first = _run(root, tmp_path / "resumed", config)
    assert first["preempted"] and len(first["history"]) == 1
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    monkeypatch.setattr(finetune_lib, "_global_batch", original)
    second = _run(root, tmp_path / "resumed", config)
    assert second["history"] == reference["history"]

    def logged(workdir):
        return [r for r in map(json.loads, open(workdir / "metrics.jsonl"))]

    assert logged(tmp_path / "resumed") == logged(tmp_path / "reference")
    assert _run(root, tmp_path / "resumed", config)["history"] == reference["history"]  # finished: no more steps
    with pytest.raises(ValueError, match="holds a fine-tuning run with labels"):
        _run(root, tmp_path / "resumed", _config(epochs=3))


def test_parameters_and_optimizer_state_are_sharded_like_pretraining(setup_dirs):
    config = _config()
    config.mesh.update(data=2, fsdp=2, tensor=2)
    run = finetune_lib.setup(pretrained.load(str(setup_dirs / "pre")).config, 3, config, num_steps=10)
    specs = {"/".join(str(getattr(k, "key", k)) for k in path): s.spec
             for path, s in jax.tree_util.tree_leaves_with_path(run.state_shardings.params)}
    assert specs["classifier/kernel"] == P("fsdp", None)
    assert sum("tensor" in str(spec) for spec in specs.values()) >= 4  # heads, feed-forward, vocabulary
    mu = jax.tree_util.tree_leaves(run.state_shardings.opt_state)
    assert sum("tensor" in str(s.spec) for s in mu) >= 8


def test_two_processes_on_loopback_fine_tune_like_one(setup_dirs, tmp_path):
    from test_multiprocess import run_cli_on_two_processes

    root = setup_dirs
    flags = ["--max-length", "24", "--batch-size", "16", "--epochs", "2", "--learning-rate", "1e-3",
             "--config.train.log_every=2"]
    run_cli_on_two_processes(["finetune", "--init", str(root / "pre"), "--train", str(root / "train.tsv"), "--eval",
                              str(root / "eval.tsv"), "--workdir", str(tmp_path / "two")] + flags)
    assert main(["finetune", "--init", str(root / "pre"), "--train", str(root / "train.tsv"), "--eval",
                 str(root / "eval.tsv"), "--workdir", str(tmp_path / "one")] + flags) == 0

    def logged(name):
        return [r for r in map(json.loads, open(tmp_path / name / "metrics.jsonl"))]

    two, one = logged("two"), logged("one")
    assert [sorted(r) for r in two] == [sorted(r) for r in one]
    for a, b in zip(two, one):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    np.testing.assert_allclose(Classifier(str(tmp_path / "two")).predict(["서울은 학교의 좋다."])[1],
                               Classifier(str(tmp_path / "one")).predict(["서울은 학교의 좋다."])[1], rtol=1e-4)
