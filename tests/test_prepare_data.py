"""prepare-data: shards, metadata, NSP/SOP pairs, round trip, determinism, bad input."""

import hashlib
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from bert_jax.cli import main
from bert_jax.data import pretraining_data, tokenizer, tokenizer_training
from bert_jax.data.pretraining_data import DataSettings, prepare_data

KOWIKI = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "kowiki_docs_5MB.txt")


def read_examples(data_dir, split="train"):
    metadata = json.load(open(os.path.join(data_dir, "metadata.json")))
    examples = []
    for entry in metadata["splits"][split]["files"]:
        records = list(tf.data.TFRecordDataset(os.path.join(data_dir, entry["name"])).as_numpy_iterator())
        assert len(records) == entry["examples"]
        for record in records:
            features = tf.train.Example.FromString(record).features.feature
            examples.append({k: np.array(v.int64_list.value or v.float_list.value) for k, v in features.items()})
    return metadata, examples


def _squash(text):
    return re.sub(r"\s+", "", text)


def _documents(corpus_path):
    return [_squash(d) for d in corpus_path.read_text(encoding="utf-8").split("\n\n") if d.strip()]


def _follows(first, second, documents):
    """Whether some document holds `second` after `first` (truncation may drop tokens between)."""
    return any(d.find(second, d.find(first) + len(first)) >= 0 for d in documents if first in d)


def _segments(example):
    ids, seg = example["input_ids"], example["segment_ids"]
    return ids[1:(seg == 0).sum() - 1], ids[(seg == 0).sum():-1]


@pytest.fixture(scope="module")
def nsp_data(tmp_path_factory, korean_corpus, tokenizer_dir):
    out = tmp_path_factory.mktemp("data") / "nsp"
    prepare_data([str(korean_corpus)], tokenizer_dir, str(out),
                 DataSettings(max_seq_length=48, eval_fraction=0.1, num_shards=3, docs_per_chunk=16),
                 workers=1, progress=False)
    return str(out)


def test_metadata_and_shards(nsp_data, tokenizer_dir):
    metadata, examples = read_examples(nsp_data)
    tok = tokenizer.load(tokenizer_dir)
    assert metadata["vocab_size"] == tok.vocab_size and metadata["max_seq_length"] == 48
    assert metadata["tokenizer"]["fingerprint"] == tok.fingerprint
    assert metadata["special_ids"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert [f["name"] for f in metadata["splits"]["train"]["files"]] == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert metadata["splits"]["eval"]["documents"] == 12 and metadata["splits"]["train"]["documents"] == 108
    assert metadata["summary"]["documents"] == 120 and metadata["masking"] == "dynamic"
    assert tokenizer.load(os.path.join(nsp_data, "tokenizer")).fingerprint == tok.fingerprint
    assert metadata["arguments"]["max_seq_length"] == 48
    assert len(examples) == metadata["splits"]["train"]["examples"] > 50


def test_examples_are_well_formed_and_decode_to_the_corpus(nsp_data, korean_corpus, tokenizer_dir):
    tok = tokenizer.load(tokenizer_dir)
    documents = _documents(korean_corpus)
    _, examples = read_examples(nsp_data)
    _, eval_examples = read_examples(nsp_data, "eval")
    labels = []
    for example in examples + eval_examples:
        ids, seg = example["input_ids"], example["segment_ids"]
        assert len(ids) <= 48 and len(seg) == len(ids) == len(example["word_starts"])
        assert ids[0] == 2 and ids[-1] == 3 and (ids == 3).sum() == 2
        assert np.all(np.diff(seg) >= 0) and seg[0] == 0 and seg[-1] == 1
        assert np.array_equal(example["word_starts"], tok.is_word_start[ids])
        a, b = (_squash(tok.decode(s)) for s in _segments(example))
        a_docs = [d for d in documents if a in d]
        assert a_docs, "segment A must come from the corpus"
        assert any(b in d for d in documents), "segment B must come from the corpus"
        label = int(example["next_sentence_label"][0])
        labels.append(label)
        if label == 0:
            assert _follows(a, b, a_docs)  # B follows A in the same document
    share_random = np.mean(labels)
    assert 0.35 < share_random < 0.7


def test_random_next_comes_from_another_document(nsp_data, korean_corpus, tokenizer_dir):
    tok = tokenizer.load(tokenizer_dir)
    documents = _documents(korean_corpus)
    _, examples = read_examples(nsp_data)
    foreign = []
    for example in examples:
        if example["next_sentence_label"][0] == 1:
            a, b = (_squash(tok.decode(s)) for s in _segments(example))
            foreign.append(not _follows(a, b, documents))
    assert np.mean(foreign) > 0.95  # a short B may by chance also follow A elsewhere


def test_sop_and_single_segment(tmp_path, korean_corpus, tokenizer_dir):
    tok = tokenizer.load(tokenizer_dir)
    documents = _documents(korean_corpus)
    prepare_data([str(korean_corpus)], tokenizer_dir, str(tmp_path / "sop"),
                 DataSettings(max_seq_length=40, pair_task="sop", eval_fraction=0.0), progress=False)
    _, examples = read_examples(str(tmp_path / "sop"))
    labels = [int(e["next_sentence_label"][0]) for e in examples]
    assert 0.4 < np.mean(labels) < 0.6
    for example, label in zip(examples, labels):
        a, b = (_squash(tok.decode(s)) for s in _segments(example))
        assert _follows(b, a, documents) if label == 1 else _follows(a, b, documents)
    prepare_data([str(korean_corpus)], tokenizer_dir, str(tmp_path / "none"),
                 DataSettings(max_seq_length=40, pair_task="none", eval_fraction=0.0), progress=False)
    _, examples = read_examples(str(tmp_path / "none"))
    assert all(e["segment_ids"].sum() == 0 and (e["input_ids"] == 3).sum() == 1 for e in examples)
    assert max(len(e["input_ids"]) for e in examples) == 40


def test_static_masking(tmp_path, korean_corpus, tokenizer_dir):
    prepare_data([str(korean_corpus)], tokenizer_dir, str(tmp_path / "static"),
                 DataSettings(max_seq_length=48, masking="static", dupe_factor=2, max_predictions_per_seq=7),
                 progress=False)
    metadata, examples = read_examples(str(tmp_path / "static"))
    assert metadata["masking"] == "static"
    masked_total = 0
    for e in examples:
        assert "word_starts" not in e and len(e["masked_lm_positions"]) == 7
        w = e["masked_lm_weights"] > 0
        assert np.all(e["masked_lm_positions"][w] < len(e["input_ids"]))
        assert np.all(e["masked_lm_ids"][w] >= 5)
        masked_total += (e["input_ids"] == 4).sum()
    assert masked_total > 0


def _digest(directory):
    return {name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(directory)) if name.endswith(".tfrecord")}


def test_output_identical_for_any_worker_count(tmp_path, korean_corpus, tokenizer_dir):
    settings = DataSettings(max_seq_length=48, num_shards=2, docs_per_chunk=8, masking="static")
    for workers in (1, 2):
        prepare_data([str(korean_corpus)], tokenizer_dir, str(tmp_path / f"w{workers}"), settings,
                     workers=workers, progress=False)
    assert _digest(tmp_path / "w1") == _digest(tmp_path / "w2") and len(_digest(tmp_path / "w1")) == 3
    prepare_data([str(korean_corpus)], tokenizer_dir, str(tmp_path / "seed"),
                 DataSettings(max_seq_length=48, num_shards=2, docs_per_chunk=8, masking="static", seed=1),
                 progress=False)
    assert _digest(tmp_path / "seed") != _digest(tmp_path / "w1")


def test_messy_input_is_repaired_and_counted(tmp_path, tokenizer_dir):
    messy = tmp_path / "messy.txt"
    good = "서울은 한국의 역사이다.\n조선의 장군이 바다에서 전쟁을 하였다.\n"
    messy.write_bytes(
        b"\xef\xbb\xbf" + good.encode() + b"\n"                          # BOM
        + "학생이 도서관에서 과학을 보았다.\r\n".encode() * 2 + b"\r\n"  # CRLF
        + "서울의 문화\x00는 좋다.\n".encode() + b"\n"                  # NUL byte
        + b"\xff\xfe bad bytes \xc3\x28 " + "한국의 역사이다.\n".encode() + b"\n"  # invalid UTF-8
        + bytes([*range(1, 9), *range(14, 32)]) * 4 + b"\n\n"             # binary junk
        + "한 문장만 있는 문서이다.\n\n".encode()                          # one-sentence document
        + ("서울은 한국의 역사이다 " * 600).encode() + b"\n")              # a very long line
    metadata = prepare_data([str(messy)], tokenizer_dir, str(tmp_path / "out"),
                            DataSettings(max_seq_length=32, eval_fraction=0.0), progress=False)
    repairs = metadata["summary"]["repairs_and_skips"]
    assert repairs["byte_order_marks_removed"] == 1 and repairs["crlf_line_endings"] == 3
    assert repairs["nul_bytes_removed"] == 1 and repairs["lines_with_invalid_utf8_repaired"] == 1
    assert repairs["skipped_binary_lines"] == 1 and repairs["long_lines_split"] == 1
    assert repairs["long_sentences_split"] >= 1
    assert metadata["summary"]["documents"] == 6
    _, examples = read_examples(str(tmp_path / "out"))
    tok = tokenizer.load(tokenizer_dir)
    text = "".join(_squash(tok.decode(e["input_ids"])) for e in examples)
    # The long line is split, not dropped (pair truncation trims some of its tokens, as in BERT).
    assert text.count("서울은한국의역사이다") >= 250


def test_bad_arguments_and_inputs(tmp_path, korean_corpus, tokenizer_dir, nsp_data, capsys):
    with pytest.raises(FileNotFoundError, match="--input .*nope.txt: no such file"):
        prepare_data([str(tmp_path / "nope.txt")], tokenizer_dir, str(tmp_path / "a"), DataSettings())
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n\n")
    with pytest.raises(ValueError, match="holds no documents"):
        prepare_data([str(empty)], tokenizer_dir, str(tmp_path / "b"), DataSettings(), progress=False)
    with pytest.raises(FileExistsError, match="already holds prepared data"):
        prepare_data([str(korean_corpus)], tokenizer_dir, nsp_data, DataSettings())
    with pytest.raises(FileNotFoundError, match="not a tokenizer directory"):
        prepare_data([str(korean_corpus)], str(tmp_path), str(tmp_path / "c"), DataSettings())
    with pytest.raises(ValueError, match="--max-predictions-per-seq"):
        DataSettings(max_seq_length=16, max_predictions_per_seq=20).validate()
    # stored masks that cannot hold the rate would cap it: refused (dynamic data is checked by pretrain)
    with pytest.raises(ValueError, match=r"^--max-predictions-per-seq 5 holds fewer than the up to 25 tokens that "
                                         r"--mask-prob 0.4 masks at --max-seq-length 64"):
        DataSettings(max_seq_length=64, masking="static", mask_prob=0.4, max_predictions_per_seq=5).validate()
    DataSettings(max_seq_length=64, masking="dynamic", mask_prob=0.4, max_predictions_per_seq=5).validate()
    assert DataSettings(max_seq_length=64, masking="static", mask_prob=0.4).max_predictions_per_seq == 26
    with pytest.raises(ValueError, match="--pair-task"):
        DataSettings(pair_task="xyz").validate()
    assert main(["prepare-data", "--input", str(empty), "--tokenizer", tokenizer_dir,
                 "--output", str(tmp_path / "d"), "--quiet"]) == 2
    assert "holds no documents" in capsys.readouterr().err
    assert not [p for p in os.listdir(tmp_path) if ".staging-" in p or p.endswith(".lock")]


def test_interrupted_run_leaves_no_output(tmp_path, korean_corpus, tokenizer_dir, monkeypatch):
    calls = []
    original = pretraining_data.process_chunk

    def failing(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(job)

    monkeypatch.setattr(pretraining_data, "process_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_data([str(korean_corpus)], tokenizer_dir, str(tmp_path / "out"),
                     DataSettings(docs_per_chunk=8), progress=False)
    assert os.listdir(tmp_path) == []  # neither the output nor a staging directory remains


def test_json_lines_and_tfds_inputs(tmp_path, tokenizer_dir):
    import tensorflow_datasets as tfds

    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"text": "서울은 한국의 역사이다. 조선의 장군이 바다에서 전쟁을 하였다! 학생이 좋다."}),
        "{not json", json.dumps({"title": "no text"}),
        json.dumps({"text": "도서관에서 과학을 보았다. 시민의 헌법이다."})]), encoding="utf-8")
    metadata = prepare_data([str(jsonl)], tokenizer_dir, str(tmp_path / "j"),
                            DataSettings(max_seq_length=32, eval_fraction=0.0), progress=False)
    assert metadata["summary"]["documents"] == 2 and metadata["summary"]["sentences"] == 5
    assert metadata["summary"]["repairs_and_skips"]["skipped_json_lines_without_text"] == 2
    with tfds.testing.mock_data(num_examples=12):
        metadata = prepare_data(["tfds:wikipedia/20230601.ko"], tokenizer_dir, str(tmp_path / "t"),
                                DataSettings(max_seq_length=32, eval_fraction=0.0), progress=False)
    assert metadata["summary"]["documents"] == 12 and metadata["splits"]["train"]["examples"] > 0


@pytest.mark.skipif(not os.path.exists(KOWIKI), reason="../shared/data is absent")
def test_korean_wikipedia(tmp_path):
    tok = tokenizer_training.train([KOWIKI], str(tmp_path / "tok"), vocab_size=4000, input_sentence_size=20000)
    metadata = prepare_data([KOWIKI], str(tmp_path / "tok"), str(tmp_path / "data"),
                            DataSettings(masking="static"), workers=2, progress=False)
    assert metadata["summary"]["documents"] == 517 and metadata["summary"]["unk_share"] < 0.01
    assert metadata["splits"]["train"]["examples"] > 10000
    _, examples = read_examples(str(tmp_path / "data"))
    weights = np.stack([e["masked_lm_weights"] for e in examples[:2000]])
    real = np.array([(e["input_ids"] >= 4).sum() for e in examples[:2000]])  # [MASK] was a real token
    assert abs(weights.sum() / np.minimum(20, np.round(real * 0.15)).sum() - 1) < 0.1
    assert tok.vocab_size == 4000


def test_truncation_drops_from_the_longer_segment_at_random_ends():
    import random

    from bert_jax.data.instances import truncate_pair, truncated_lengths

    def one_at_a_time(a, b, limit):
        while a + b > limit:
            a, b = (a - 1, b) if a > b else (a, b - 1)
        return a, b

    for a, b, limit in [(a, b, m) for a in range(30) for b in range(30) for m in range(1, 40)]:
        assert truncated_lengths(a, b, limit) == one_at_a_time(a, b, limit)
    rng, fronts = random.Random(0), []
    for _ in range(200):
        kept_a, kept_b = truncate_pair((0, 100), (100, 110), 50, rng)
        assert kept_a[1] - kept_a[0] == 40 and kept_b == (100, 110)  # a window of a, all of b
        fronts.append(kept_a[0])
    assert 25 < np.mean(fronts) < 35  # 60 drops, each at the front with probability 1/2


def test_block_reader_equals_line_by_line_cleaning(tmp_path, korean_corpus, monkeypatch):
    from bert_jax.data import corpus

    path = tmp_path / "mixed.txt"
    path.write_bytes(korean_corpus.read_bytes() + "\n\n정상 문장\r\n둘째 줄\n\n".encode() + b"\xff\n" + "끝".encode())

    def documents():
        stats = corpus.CorpusStats()
        return list(corpus.read_plain_text(str(path), stats, 2000)), stats

    blocks, block_stats = documents()
    monkeypatch.setattr(corpus, "_BLOCK_BYTES", 37)  # blocks that end inside lines and characters
    small, small_stats = documents()
    lines = [corpus.clean_line(raw.rstrip(b"\n"), corpus.CorpusStats()) for raw in open(path, "rb")]
    expected, document = [], []
    for line in lines:
        if line:
            document.append(line)
        elif line == "" and document:
            expected, document = expected + [document], []
    assert blocks == small == expected + [document]
    assert block_stats == small_stats and block_stats["crlf_line_endings"] == 1
    assert block_stats["lines_with_invalid_utf8_repaired"] == 1


def test_forked_cli_workers_write_what_one_process_writes(tmp_path, korean_corpus, tokenizer_dir):
    import subprocess
    import sys

    settings = DataSettings(max_seq_length=48, num_shards=2, chunk_chars=2000)
    prepare_data([str(korean_corpus)], tokenizer_dir, str(tmp_path / "one"), settings, workers=1, progress=False)
    code = ("import sys; from bert_jax.data import pretraining_data as p; from bert_jax.cli import main; "
            "assert p._start_method() == 'fork'; code = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules and 'jax' not in sys.modules; sys.exit(code)")
    subprocess.run([sys.executable, "-c", code, "prepare-data", "--input", str(korean_corpus), "--tokenizer",
                    tokenizer_dir, "--output", str(tmp_path / "forked"), "--workers", "2", "--max-seq-length", "48",
                    "--num-shards", "2", "--chunk-chars", "2000", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "forked")
    chunks = json.load(open(tmp_path / "one" / "metadata.json"))["arguments"]["chunk_chars"]
    assert chunks == 2000


def test_records_parse_with_tensorflow_for_every_varint_width(tmp_path):
    from bert_jax.data.records import frame_records, serialize_columns

    values = [np.array([], np.int64), np.array([0, 127, 128, 16383]), np.array([16384, 2**21, 2**40, 5])]
    floats = [np.array([0.5], np.float32), np.array([], np.float32), np.array([1.0, -2.0], np.float32)]
    columns = {"ids": (np.concatenate(values), np.array([len(v) for v in values])),
               "weights": (np.concatenate(floats), np.array([len(v) for v in floats]))}
    (tmp_path / "r.tfrecord").write_bytes(frame_records(serialize_columns(columns)))
    parsed = [tf.train.Example.FromString(r).features.feature
              for r in tf.data.TFRecordDataset(str(tmp_path / "r.tfrecord")).as_numpy_iterator()]
    assert [list(p["ids"].int64_list.value) for p in parsed] == [list(v) for v in values]
    assert [list(p["weights"].float_list.value) for p in parsed] == [list(v) for v in floats]
