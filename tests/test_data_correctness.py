"""Data correctness on real-world input: special ids taken from the tokenizer (never assumed),
honest NSP labels, compressed / binary / mis-encoded corpora, strict fine-tuning tables."""

import bz2
import gzip
import hashlib
import json
import lzma
import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from bert_jax.cli import main
from bert_jax.data import input_pipeline, tokenizer, tokenizer_training
from bert_jax.data.finetune_data import encode
from bert_jax.data.pretraining_data import DataSettings, prepare_data

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SIX_WORDS = ["서울은 한국의 역사 문화 경제 과학", "부산은 바다 마을 도시 사람 학생", "학교 도서관 정부 국회 법률 헌법"]


def _shard_examples(data_dir):
    metadata = json.load(open(os.path.join(data_dir, "metadata.json")))
    examples = []
    for entry in metadata["splits"]["train"]["files"]:
        for record in tf.data.TFRecordDataset(os.path.join(data_dir, entry["name"])).as_numpy_iterator():
            features = tf.train.Example.FromString(record).features.feature
            examples.append({k: np.array(v.int64_list.value or v.float_list.value) for k, v in features.items()})
    return metadata, examples


@pytest.fixture(scope="module")
def specials_last(tmp_path_factory, korean_corpus):
    """A WordPiece tokenizer.json (as import-hf accepts it) whose whole-word vocabulary covers the
    test corpora and whose [PAD] [UNK] [CLS] [SEP] [MASK] are the last five ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    split = pre_tokenizers.BertPreTokenizer()
    lines = korean_corpus.read_text(encoding="utf-8").splitlines() + SIX_WORDS
    words = sorted({word for line in lines for word, _ in split.pre_tokenize_str(line)})
    hf = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words + list(SPECIALS))}, unk_token="[UNK]"))
    hf.pre_tokenizer = split
    hf.add_special_tokens(list(SPECIALS))
    directory = tmp_path_factory.mktemp("specials_last")
    hf.save(str(directory / "tokenizer.json"))
    tok = tokenizer.load(str(directory))
    assert tok.pad_id == len(words) and tok.mask_id == len(words) + 4 and tok.vocab_size == len(words) + 5
    return tok


def _budget(real_ordinary_tokens, max_predictions):
    return np.minimum(max_predictions, np.maximum(1, np.floor(real_ordinary_tokens * 0.15 + 0.5)))


def test_static_masking_predicts_real_tokens_only(tmp_path, specials_last):
    corpus = tmp_path / "six.txt"
    corpus.write_text("\n\n".join(SIX_WORDS * 10) + "\n", encoding="utf-8")
    prepare_data([str(corpus)], specials_last.directory, str(tmp_path / "data"),
                 DataSettings(max_seq_length=32, pair_task="none", masking="static", eval_fraction=0.0),
                 progress=False)
    metadata, examples = _shard_examples(str(tmp_path / "data"))
    assert metadata["special_ids"]["[PAD]"] == specials_last.pad_id and len(examples) == 30
    for e in examples:
        assert len(e["input_ids"]) == 8  # [CLS] + 6 words + [SEP]; padding is never stored
        real = e["masked_lm_weights"] > 0
        assert real.sum() == 1  # round(0.15 x 6) = 1, not 5 (6 words + 24 padding slots taken as words)
        assert np.all(e["masked_lm_positions"][real] < 8) and np.all(e["masked_lm_positions"][real] >= 1)


def test_static_masking_budget_on_pairs(tmp_path, korean_corpus, specials_last):
    prepare_data([str(korean_corpus)], specials_last.directory, str(tmp_path / "data"),
                 DataSettings(max_seq_length=32, masking="static", max_predictions_per_seq=5, eval_fraction=0.0),
                 progress=False)
    _, examples = _shard_examples(str(tmp_path / "data"))
    for e in examples:
        ordinary = ~np.isin(e["input_ids"], specials_last.special_ids) | (e["input_ids"] == specials_last.mask_id)
        ordinary[[0, -1]] = False  # [CLS] and the last [SEP] (a masked token may show as [MASK])
        ordinary[np.flatnonzero(np.diff(e["segment_ids"]))] = False  # the [SEP] closing segment A
        weights = e["masked_lm_weights"] > 0
        assert weights.sum() == _budget(ordinary.sum(), 5)
        assert np.all(e["masked_lm_positions"][weights] < len(e["input_ids"]))


@pytest.fixture(scope="module")
def dynamic_data(tmp_path_factory, specials_last):
    root = tmp_path_factory.mktemp("dynamic")
    corpus = root / "six.txt"
    corpus.write_text("\n\n".join(SIX_WORDS * 12) + "\n", encoding="utf-8")
    prepare_data([str(corpus)], specials_last.directory, str(root / "data"),
                 DataSettings(max_seq_length=32, pair_task="none", eval_fraction=0.25, num_shards=1),
                 progress=False)
    return str(root / "data"), json.load(open(root / "data" / "metadata.json"))


def test_dynamic_masking_pads_with_the_pad_id_and_predicts_real_tokens(dynamic_data, specials_last):
    data_dir, metadata = dynamic_data
    batches = list(input_pipeline.train_batches(data_dir, metadata, 9, 6, seed=0, mask_prob=0.15,
                                                shuffle_buffer=16))
    assert len(batches) == 6
    for batch in batches:
        real = batch["input_mask"] == 1
        assert np.all(real.sum(1) == 8) and np.all(batch["input_ids"][~real] == specials_last.pad_id)
        weights = batch["masked_lm_weights"] > 0
        assert np.all(weights.sum(1) == 1)
        rows = np.broadcast_to(np.arange(9)[:, None], weights.shape)
        assert np.all(real[rows[weights], batch["masked_lm_positions"][weights]])


def test_eval_padding_rows_hold_pad_ids(dynamic_data, specials_last):
    data_dir, metadata = dynamic_data
    assert metadata["splits"]["eval"]["examples"] == 9
    batches = list(input_pipeline.eval_batches(data_dir, metadata, 4, 4, seed=0, mask_prob=0.15))
    ids = np.concatenate([b["input_ids"] for b in batches])
    weights = np.concatenate([b["example_weights"] for b in batches])
    mask = np.concatenate([b["input_mask"] for b in batches])
    assert ids.shape == (16, 32) and weights.sum() == 9
    assert np.all(ids[mask == 0] == specials_last.pad_id) and np.all(mask[weights == 0] == 0)
    assert np.all(np.concatenate([b["masked_lm_weights"] for b in batches]).sum(1) == (weights > 0))


def test_finetune_encoding_pads_with_the_pad_id_and_masks_by_length(specials_last):
    rows = [{"text": SIX_WORDS[0], "label": "a"}, {"text": "서울은", "label": "b"}]
    examples = encode(rows, specials_last, "text", None, 12, ["a", "b"], "label")
    assert examples.input_mask.sum(1).tolist() == [8, 3]
    assert np.all(examples.input_ids[examples.input_mask == 0] == specials_last.pad_id)
    assert examples.input_ids[1, :3].tolist() == [specials_last.cls_id, specials_last.token_to_id("서울은"),
                                                  specials_last.sep_id]


# ---- NSP / SOP label balance (one-sentence documents) ---------------------------------------

def test_one_sentence_documents_are_counted_and_the_nsp_imbalance_reported(tmp_path, korean_corpus,
                                                                            tokenizer_dir, capsys):
    lines = [line for line in korean_corpus.read_text(encoding="utf-8").splitlines() if line]
    one_per_document = tmp_path / "blank_after_every_line.txt"
    one_per_document.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    assert main(["prepare-data", "--input", str(one_per_document), "--tokenizer", tokenizer_dir, "--output",
                 str(tmp_path / "nsp"), "--quiet", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    summary = json.load(open(tmp_path / "nsp" / "metadata.json"))["summary"]
    examples = summary["examples"]
    assert summary["documents"] == summary["one_sentence_documents"] == len(lines) == examples
    assert summary["pair_labels"] == {"is_next": 0, "random_next": examples, "random_next_share": 1.0,
                                      "forced_random_next": examples}
    assert json.loads(captured.out)["pair_labels"] == summary["pair_labels"]
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert warning == [f"prepare-data: warning: 100% of the NSP labels are random_next (50% expected); "
                       f"{examples} of {examples} documents have one sentence; {examples} pairs had to be "
                       f"random because segment A was a single sentence (short documents or long sentences): "
                       f"put a blank line between documents, not after every sentence, or use --pair-task "
                       f"sop / none"]
    assert len(captured.err.splitlines()) == 1
    assert main(["prepare-data", "--input", str(one_per_document), "--tokenizer", tokenizer_dir, "--output",
                 str(tmp_path / "sop"), "--quiet", "--pair-task", "sop"]) == 0
    sop = json.load(open(tmp_path / "sop" / "metadata.json"))["summary"]["pair_labels"]
    assert sop["in_order"] + sop["swapped"] == examples and 0.4 <= sop["swapped_share"] <= 0.6
    assert sop["swapped_share"] == round(sop["swapped"] / examples, 4)
    assert "warning" not in capsys.readouterr().err


def test_nsp_labels_of_multi_sentence_documents_are_balanced(tmp_path, korean_corpus, tokenizer_dir, capsys):
    long_documents = tmp_path / "long.txt"
    text = korean_corpus.read_text(encoding="utf-8").split("\n\n")
    long_documents.write_text("\n\n".join("\n".join(text[i:i + 6]) for i in range(0, len(text), 6)),
                              encoding="utf-8")
    summary = prepare_data([str(long_documents)], tokenizer_dir, str(tmp_path / "out"),
                           DataSettings(max_seq_length=64, eval_fraction=0.0), progress=False)["summary"]
    labels = summary["pair_labels"]
    assert labels["is_next"] + labels["random_next"] == summary["examples"]
    assert 0.4 <= labels["random_next_share"] <= 0.6 and summary["one_sentence_documents"] == 0
    assert labels["forced_random_next"] < labels["random_next"] / 2
    assert "warning" not in capsys.readouterr().err


# ---- compressed, binary and mis-encoded inputs, JSON lines fields ---------------------------

def _shard_digests(directory):
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(directory)) if name.endswith(".tfrecord")}


def test_compressed_corpora_are_read_transparently(tmp_path, korean_corpus, tokenizer_dir):
    settings = DataSettings(max_seq_length=48, num_shards=2, eval_fraction=0.1)
    plain = prepare_data([str(korean_corpus)], tokenizer_dir, str(tmp_path / "plain"), settings, progress=False)
    data = korean_corpus.read_bytes()
    for name, compress in (("ko.txt.gz", gzip.compress), ("ko.txt.bz2", bz2.compress), ("ko.txt.xz", lzma.compress),
                           ("gzip_named_txt.txt", gzip.compress)):
        (tmp_path / name).write_bytes(compress(data))
        metadata = prepare_data([str(tmp_path / name)], tokenizer_dir, str(tmp_path / f"out_{name}"), settings,
                                progress=False)
        assert metadata["summary"]["documents"] == 120 and metadata["splits"] == plain["splits"]
        assert _shard_digests(tmp_path / f"out_{name}") == _shard_digests(tmp_path / "plain")
    jsonl = "\n".join(json.dumps({"body": document}, ensure_ascii=False)
                      for document in data.decode().split("\n\n")).encode()
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress(jsonl))
    metadata = prepare_data([str(tmp_path / "docs.jsonl.gz")], tokenizer_dir, str(tmp_path / "jsonl"),
                            DataSettings(max_seq_length=48, text_field="body"), progress=False)
    assert metadata["summary"]["documents"] == 120


def test_train_tokenizer_reads_compressed_corpora(tmp_path, korean_corpus):
    (tmp_path / "ko.txt.xz").write_bytes(lzma.compress(korean_corpus.read_bytes()))
    plain = tokenizer_training.train([str(korean_corpus)], str(tmp_path / "plain"), vocab_size=100)
    packed = tokenizer_training.train([str(tmp_path / "ko.txt.xz")], str(tmp_path / "xz"), vocab_size=100)
    assert packed.fingerprint == plain.fingerprint and packed.vocab_size == 100


def _zip(path, member_text):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("corpus.txt", member_text)


BAD_INPUTS = {
    "random.bin": (lambda path, text: path.write_bytes(np.random.default_rng(0).bytes(20_000)),
                   "random.bin: binary data, not text (5"),
    "corpus.zip": (lambda path, text: _zip(path, text), "corpus.zip: a ZIP archive (unzip it first), not text"),
    "cut.txt.gz": (lambda path, text: path.write_bytes(gzip.compress(text.encode())[:-40]),
                   "cut.txt.gz: damaged gzip data: Compressed file ended before the end-of-stream marker"),
    "euc_kr.txt": (lambda path, text: path.write_bytes(text.encode("cp949")),
                   "euc_kr.txt: the text is not UTF-8; it looks like cp949 (EUC-KR): convert it first, e.g. "
                   "`iconv -f cp949 -t utf-8 "),
    "utf16.txt": (lambda path, text: path.write_bytes(text.encode("utf-16")),
                  "utf16.txt: the text is not UTF-8; it looks like utf-16: convert it first"),
    "wrong_field.jsonl": (lambda path, text: path.write_text("\n".join(
        json.dumps({"title": "제목", "body": document}, ensure_ascii=False) for document in text.split("\n\n"))),
        "wrong_field.jsonl: no record has the field 'text' (--text-field); the records have ['body', 'title']"),
    "not_json.jsonl": (lambda path, text: path.write_text(text), "not_json.jsonl: no JSON object in its first lines"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_inputs_that_are_not_utf8_text_are_one_line_errors(name, tmp_path, korean_corpus, tokenizer_dir, capsys):
    write, message = BAD_INPUTS[name]
    path = tmp_path / "inputs" / name
    path.parent.mkdir()
    write(path, korean_corpus.read_text(encoding="utf-8"))
    assert main(["prepare-data", "--input", str(korean_corpus), str(path), "--tokenizer", tokenizer_dir,
                 "--output", str(tmp_path / "data"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bert-jax prepare-data: error: {path.parent}/{message}") and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["inputs"]  # no output, no staging directory
    if not name.endswith(".jsonl"):
        assert main(["train-tokenizer", "--input", str(path), "--output", str(tmp_path / "tok"),
                     "--vocab-size", "100"]) == 2
        assert capsys.readouterr().err.startswith(f"bert-jax train-tokenizer: error: {path.parent}/{message}")
    assert sorted(os.listdir(tmp_path)) == ["inputs"]


# ---- fine-tuning tables, labels and flags ---------------------------------------------------

def _table(path, rows, header="id\ttext\tlabel"):
    path.write_text("\n".join([header] + rows) + "\n", encoding="utf-8")
    return path


def _good_rows(n, start=0):
    return [f"{i}\t{SIX_WORDS[i % 3]}\t{'긍정' if i % 2 else '부정'}" for i in range(start, start + n)]


def _finetune_cli(tmp_path, train, evaluation=None, *flags):
    """`bert-jax finetune` with a model that does not exist: these errors come before it is loaded."""
    return main(["finetune", "--init", str(tmp_path / "no_model"), "--train", str(train), "--eval",
                 str(evaluation or train), "--workdir", str(tmp_path / "ft"), "--batch-size", "8",
                 "--max-length", "16", "--epochs", "1", *flags])


TABLE_ERRORS = {
    "tab_in_review.tsv": (_good_rows(3) + ["3\t서울은 한국의\t역사 문화\t긍정"] + _good_rows(2, 4),
                          "line 5: 4 fields where the header has 3 (id, text, label); a TAB inside a text?"),
    "short_row.tsv": (_good_rows(2) + ["2\t서울은 한국의"], "line 4: 2 fields where the header has 3 (id, text, label)"),
    "empty_label.tsv": (_good_rows(3) + ["3\t서울은 한국의\t "], "line 5: empty label in column 'label'"),
    "comma.csv": (["0,서울은 한국의,긍정", "1,서울은, 한국의,부정", "2,학교,부정"],
                  "line 3: 4 fields where the header has 3 (id, text, label); an unquoted comma inside a text?"),
    "broken.jsonl": (['{"text": "서울은", "label": "긍정"}', '{"text": "학교", "label": "부정"}', '{"text": "학교",'],
                     "line 4: invalid JSON (Expecting property name enclosed in double quotes)"),
    "no_label.jsonl": (['{"text": "서울은", "label": "긍정"}', '{"text": "학교"}'], "line 3: lacks column(s) ['label']"),
}


@pytest.mark.parametrize("name", sorted(TABLE_ERRORS))
def test_malformed_table_rows_are_errors_naming_the_line(name, tmp_path, capsys):
    rows, message = TABLE_ERRORS[name]
    header = {"tsv": "id\ttext\tlabel", "csv": "id,text,label", "jsonl": '{"text": "도시", "label": "부정"}'}
    path = _table(tmp_path / name, rows, header[name.rsplit(".", 1)[1]])
    assert _finetune_cli(tmp_path, path) == 2
    assert capsys.readouterr().err == (f"bert-jax finetune: error: {path}: {message}; fix the row, or skip such rows "
                                       f"with --skip-bad-rows\n")
    assert not (tmp_path / "ft").exists()


def test_label_sets_that_cannot_make_a_classifier(tmp_path, capsys):
    one_label = _table(tmp_path / "one.tsv", [f"{i}\t{SIX_WORDS[i % 3]}\t긍정" for i in range(6)])
    assert _finetune_cli(tmp_path, one_label) == 2
    assert capsys.readouterr().err == (f"bert-jax finetune: error: {one_label}: every row has the label '긍정' "
                                       f"(column 'label'); a classifier needs at least two labels\n")
    extra = _table(tmp_path / "extra.tsv", _good_rows(4) + ["4\t학교\t중립"])
    assert _finetune_cli(tmp_path, extra, None, "--labels", "부정", "긍정") == 2
    assert capsys.readouterr().err == (f"bert-jax finetune: error: {extra}: line 6: label '중립' is not one of the "
                                       f"labels ['부정', '긍정']\n")
    good = _table(tmp_path / "good.tsv", _good_rows(6))
    assert _finetune_cli(tmp_path, good, extra) == 2
    assert capsys.readouterr().err == (f"bert-jax finetune: error: {extra}: line 6: label '중립' is not one of the "
                                       f"labels ['긍정', '부정']\n")
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "config.train.global_batch_size=0 (--batch-size): must be >= 1"),
    (["--epochs", "0"], "config.train.epochs=0 (--epochs): must be >= 1"),
    (["--max-length", "2"], "config.train.max_length=2 (--max-length): must be >= 3 (the [CLS] and [SEP] tokens "
                            "and one more)"),
    (["--learning-rate", "0"], "config.train.learning_rate=0.0 (--learning-rate): must be > 0.0"),
    (["--patience", "0"], "config.train.patience=0 (--patience): must be >= 1"),
    (["--config.train.log_every=0"], "config.train.log_every=0: must be >= 1"),
])
def test_finetune_flags_are_checked_before_any_work(flags, message, tmp_path, capsys):
    train = _table(tmp_path / "train.tsv", _good_rows(8))
    assert _finetune_cli(tmp_path, train, None, *flags) == 2
    assert capsys.readouterr().err == f"bert-jax finetune: error: {message}\n"
    assert sorted(os.listdir(tmp_path)) == ["train.tsv"]


@pytest.fixture(scope="module")
def hf_init(tmp_path_factory, specials_last):
    """A random Hugging Face BERT (max_position_embeddings 40) with the specials-last tokenizer."""
    import shutil

    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=specials_last.vocab_size, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=37, max_position_embeddings=40,
                                     pad_token_id=specials_last.pad_id)
    directory = tmp_path_factory.mktemp("hf_init")
    transformers.BertForPreTraining(config).save_pretrained(directory)
    shutil.copy(os.path.join(specials_last.directory, "tokenizer.json"), directory)
    return directory


def test_max_length_beyond_the_model_is_refused_before_encoding(tmp_path, hf_init):
    import tracemalloc

    from bert_jax.config.defaults import finetune_config
    from bert_jax.inference import hf  # noqa: F401  (imported before tracing: the model loader)
    from bert_jax.training.finetune import finetune

    train = _table(tmp_path / "train.tsv", _good_rows(400))
    config = finetune_config()
    config.train.update(max_length=30_000, global_batch_size=8)
    tracemalloc.start()
    with pytest.raises(ValueError, match="max_length=30000 \\(--max-length\\) exceeds the model's "
                                         "max_position_embeddings=40"):
        finetune(str(hf_init), str(train), str(train), str(tmp_path / "ft"), "text", "label", config=config)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 << 20  # encoding 400 x 30,000 ids, mask and segments first took 144 MB
    assert not (tmp_path / "ft").exists()


def test_skip_bad_rows_skips_and_counts_and_trains(tmp_path, hf_init, capsys):
    train = _table(tmp_path / "train.tsv", _good_rows(8) + ["8\t서울은\t한국의\t긍정", "9\t학교\t"] + _good_rows(8, 10))
    evaluation = _table(tmp_path / "eval.tsv", _good_rows(8, 20))
    assert main(["finetune", "--init", str(hf_init), "--train", str(train), "--eval", str(evaluation), "--workdir",
                 str(tmp_path / "ft"), "--batch-size", "8", "--max-length", "16", "--epochs", "1", "--skip-bad-rows",
                 "--labels", "부정", "긍정"]) == 0
    out = capsys.readouterr().out
    assert f"skipped bad rows (--skip-bad-rows): 2 in {train}, 0 in {evaluation}" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["skipped_rows"] == {"train": 2, "eval": 0} and result["labels"] == ["부정", "긍정"]
    assert json.load(open(tmp_path / "ft" / "finetune.json"))["labels"] == ["부정", "긍정"]


# ---- output permissions ---------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_are_created_with_the_umask(umask, tmp_path, korean_corpus, tokenizer_dir):
    previous = os.umask(umask)
    try:
        prepare_data([str(korean_corpus)], tokenizer_dir, str(tmp_path / "data"), DataSettings(max_seq_length=32),
                     progress=False)
        tokenizer_training.train([str(korean_corpus)], str(tmp_path / "tok"), vocab_size=100)
    finally:
        os.umask(previous)
    modes = {}
    for output in ("data", "tok"):
        for root, directories, files in os.walk(tmp_path / output):
            modes[root] = os.stat(root).st_mode & 0o777
            modes.update({os.path.join(root, f): os.stat(os.path.join(root, f)).st_mode & 0o777 for f in files})
    assert len(modes) > 10
    assert {path: mode for path, mode in modes.items()
            if mode != (0o777 if os.path.isdir(path) else 0o666) & ~umask} == {}


def test_json_lines_with_documents_longer_than_the_inspected_bytes(tmp_path, tokenizer_dir):
    long_document = " ".join(["서울은 한국의 역사이다."] * 5000)  # 160 KB on one line
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"text": long_document}, ensure_ascii=False) + "\n", encoding="utf-8")
    metadata = prepare_data([str(path)], tokenizer_dir, str(tmp_path / "out"),
                            DataSettings(max_seq_length=32, eval_fraction=0.0), progress=False)
    assert metadata["summary"]["documents"] == 1 and metadata["summary"]["sentences"] == 5000


def test_fine_tuning_tables_in_another_encoding_are_named(tmp_path, capsys):
    path = tmp_path / "euc_kr.tsv"
    path.write_bytes(("id\ttext\tlabel\n" + "\n".join(_good_rows(30)) + "\n").encode("cp949"))
    assert _finetune_cli(tmp_path, path) == 2
    assert capsys.readouterr().err.startswith(f"bert-jax finetune: error: {path}: the text is not UTF-8; it looks "
                                              f"like cp949 (EUC-KR): convert it first, e.g. `iconv -f cp949")
