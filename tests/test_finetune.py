"""Fine-tuning: a separable toy task, save -> load -> predict, pairs use segment ids, bad input."""

import json
import random

import numpy as np
import pytest

from bert_jax import pretrained
from bert_jax.cli import main
from bert_jax.finetune import Classifier, encode, finetune
from test_pretrain import pretrain_tiny

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
                 str(root / "eval.tsv"), "--workdir", str(root / "ft"), "--epochs", "10", "--patience", "1",
                 "--learning-rate", "1e-2", "--batch-size", "16", "--max-length", "24"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["labels"] == ["긍정", "부정"] and result["best"]["eval_accuracy"] >= 0.95
    assert len([line for line in lines if line.startswith('{"epoch"')]) < 10  # early stopping
    assert result["best"]["eval_macro_f1"] >= 0.95
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
    with pytest.raises(ValueError, match="label '중립' \\(row 1\\) did not occur in the training data"):
        finetune(str(root / "pre"), str(root / "train.tsv"), str(tmp_path / "odd.tsv"), str(tmp_path / "w"),
                 "text", "label", epochs=1)
    assert main(args + ["--train", str(root / "train.tsv"), "--task", "pair-classification"]) == 2
    assert "needs --text-pair-column" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "--input", str(root / "eval.tsv"), "--output", "x"]) == 2
    assert "not a `bert-jax finetune` output" in capsys.readouterr().err


def test_from_scratch_keeps_architecture_but_not_weights(setup_dirs, tmp_path):
    root = setup_dirs
    finetune(str(root / "pre"), str(root / "train.tsv"), str(root / "eval.tsv"), str(tmp_path / "scratch"),
             "text", "label", max_length=24, epochs=1, learning_rate=1e-9, from_scratch=True)
    finetune(str(root / "pre"), str(root / "train.tsv"), str(root / "eval.tsv"), str(tmp_path / "warm"),
             "text", "label", max_length=24, epochs=1, learning_rate=1e-9)
    pre = pretrained.load(str(root / "pre")).params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    scratch = Classifier(str(tmp_path / "scratch")).params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    warm = Classifier(str(tmp_path / "warm")).params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert scratch.shape == pre.shape
    np.testing.assert_allclose(warm, pre, atol=1e-6)  # learning rate ~0: the pretrained weights remain
    assert np.abs(scratch - pre).max() > 1e-2


def test_tsv_texts_may_hold_quotes_and_carriage_returns(tmp_path):
    from bert_jax.finetune import read_table

    path = tmp_path / "q.tsv"
    path.write_bytes('id\tdocument\tlabel\n1\t"인용" 시작\t1\n2\t줄\r바꿈\t0\n3\t짧은\n'.encode())
    with pytest.raises(ValueError, match="line 4 lacks column\\(s\\) \\['label'\\]"):
        read_table(str(path), ["document", "label"])
    path.write_bytes('id\tdocument\tlabel\r\n1\t"인용" 시작\t1\r\n2\t줄\r바꿈\t0\r\n'.encode())
    rows = read_table(str(path), ["document", "label"])
    assert [(r["document"], r["label"]) for r in rows] == [('"인용" 시작', "1"), ("줄\r바꿈", "0")]
