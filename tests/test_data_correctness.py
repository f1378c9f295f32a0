"""Data correctness on real-world input: special ids taken from the tokenizer (never assumed),
honest NSP labels, compressed / binary / mis-encoded corpora, strict fine-tuning tables."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from bert_jax import input_pipeline, tokenizer
from bert_jax.finetune_data import encode
from bert_jax.pretraining_data import DataSettings, prepare_data

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
