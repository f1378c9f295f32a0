"""Tokenizer training and loading: special ids, composed Hangul, word starts, HF equivalence."""

import json
import os
import unicodedata

import numpy as np
import pytest
import sentencepiece as spm
import tokenizers

from bert_jax.cli import main
from bert_jax.data import tokenizer, tokenizer_training

SENTENCES = ["서울은 한국의 역사이다.", "조선의 장군이 바다에서 전쟁을 하였다.", "학생이 도서관에서 과학을 보았다."]


@pytest.mark.parametrize("model_type", ["unigram", "bpe", "wordpiece"])
def test_train_load_and_match_tokenizer_json(tmp_path, korean_corpus, model_type):
    out = tmp_path / model_type
    vocab_size = 140 if model_type == "wordpiece" else 100  # WordPiece holds the alphabet twice
    tok = tokenizer_training.train([str(korean_corpus)], str(out), vocab_size=vocab_size, model_type=model_type)
    assert tok.vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == vocab_size
    settings = json.loads((out / "bert_jax_tokenizer.json").read_text())
    assert settings["model_type"] == model_type and settings["corpus"]["documents"] == 120
    hf = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    for sentence in SENTENCES:
        ids = tok.encode(sentence)
        assert ids and tok.unk_id not in ids
        assert hf.encode(sentence, add_special_tokens=False).ids == ids
        assert hf.encode(sentence).ids == [2] + ids + [3]  # BERT's [CLS] ... [SEP] template
        assert tok.decode(ids).replace(" ", "") == sentence.replace(" ", "")
    # Hangul stays composed: no conjoining jamo (U+1100-U+11FF) in the vocabulary.
    assert not any("\u1100" <= ch <= "\u11ff" for piece in tok.vocab for ch in piece)
    assert all(unicodedata.is_normalized("NFC", piece) for piece in tok.vocab)
    if model_type != "wordpiece":
        sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
        assert [sp.encode(s) for s in SENTENCES] == tok.encode_batch(SENTENCES)


def test_word_starts(tokenizer_dir, tmp_path, korean_corpus):
    tok = tokenizer.load(tokenizer_dir)
    for i, piece in enumerate(tok.vocab):
        assert tok.is_word_start[i] == (piece.startswith("\u2581") or i < 5)
    wp = tokenizer_training.train([str(korean_corpus)], str(tmp_path / "wp"), vocab_size=140, model_type="wordpiece")
    ids = wp.encode("도서관에서")
    assert wp.is_word_start[ids].tolist() == [True] + [False] * (len(ids) - 1)
    assert all(wp.vocab[i].startswith("##") for i in ids[1:])


def test_decomposed_input_is_composed(tokenizer_dir):
    tok = tokenizer.load(tokenizer_dir)
    text = "서울은 한국의 역사이다."
    assert tok.encode(unicodedata.normalize("NFD", text)) == tok.encode(text)


def test_sampling_and_lowercase(tmp_path, korean_corpus):
    tok = tokenizer_training.train([str(korean_corpus)], str(tmp_path / "t"), vocab_size=140,
                          model_type="wordpiece", input_sentence_size=50, lowercase=True)
    assert tok.encode("SEOUL") == tok.encode("seoul")
    assert tok.settings["input_sentence_size"] == 50


def test_bad_inputs(tmp_path, korean_corpus, tokenizer_dir, capsys):
    with pytest.raises(FileNotFoundError, match="--input .*missing.txt: no such file"):
        tokenizer_training.train([str(tmp_path / "missing.txt")], str(tmp_path / "a"), vocab_size=100)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ValueError, match="holds no text"):
        tokenizer_training.train([str(empty)], str(tmp_path / "b"), vocab_size=100)
    with pytest.raises(ValueError, match="--vocab-size 5000 is too large for this corpus"):
        tokenizer_training.train([str(korean_corpus)], str(tmp_path / "big"), vocab_size=5000)
    with pytest.raises(ValueError, match="too small for the alphabet"):
        tokenizer_training.train([str(korean_corpus)], str(tmp_path / "small"), vocab_size=60, model_type="wordpiece")
    with pytest.raises(FileExistsError, match="already holds a tokenizer"):
        tokenizer_training.train([str(korean_corpus)], tokenizer_dir, vocab_size=100)
    with pytest.raises(FileNotFoundError, match="not a tokenizer directory"):
        tokenizer.load(str(tmp_path))
    assert not [p for p in os.listdir(tmp_path) if ".staging-" in p or p.endswith(".lock")]  # no leftovers
    code = main(["train-tokenizer", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "c")])
    assert code == 2
    assert "nope.txt: no such file" in capsys.readouterr().err


def test_cli_train_tokenizer(tmp_path, korean_corpus, capsys):
    assert main(["train-tokenizer", "--input", str(korean_corpus), "--output", str(tmp_path / "t"),
                 "--vocab-size", "90", "--model-type", "bpe"]) == 0
    assert "bpe tokenizer, 90 tokens" in capsys.readouterr().out
    assert np.asarray(tokenizer.load(str(tmp_path / "t")).is_word_start).dtype == bool
