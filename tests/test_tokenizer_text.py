"""Tokenizers on real-world text (issue 15, kinds 1, 2, 3, 8 and 9): our encoders against the exported
tokenizer.json on generated text variants, compatibility-jamo emoticons, special-token strings in
text, deterministic WordPiece, vocabulary-size errors."""

import dataclasses
import json
import os
import random
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2

from bert_jax.cli import main
from bert_jax.data import normalization, tokenizer, tokenizer_training
from bert_jax.data.pretraining_data import DataSettings, prepare_data
from bert_jax.inference import hf_export

MODEL_TYPES = ("unigram", "bpe", "wordpiece")
EMOTICONS = ["ㅋㅋㅋ", "ㅠㅠ", "ㅋㅠㅠ", "ㅎㅎ", "ㄷㄷ", "ㅇㅇ"]
SPECIAL_LINE = "표 [SEP] 구분 [MASK] 예시 [CLS] 끝 [PAD]"
BASES = ["서울은 한국의 역사이다.", "한국어 문장입니다", "학생이 도서관에서 과학을 보았다.", "대한민국의 주권은 국민에게 있다.",
         "ㅋㅋㅋ 진짜 웃기다 ㅠㅠ", "ㅋㅠㅠ 너무 슬퍼요 ㅎㅎ ㄷㄷ ㅇㅇ", "BERT 모델은 Transformer 구조다.",
         "東京は日本の首都です。", "Привет, мир!", "大韓民國 韓國語 漢字", "[참고] (주)회사 <b>태그</b> {괄호} 「인용」",
         "이모지 😀 👍🏻 👨\u200d👩\u200d👧 ❤\ufe0f 🇰🇷 1\ufe0f\u20e3 끝", "카타카나 ｶﾀｶﾅ ひらがな", "ﬁle ① ㎞ ㈜ ™ ½ …",
         "cafe\u0301 ñ Å", SPECIAL_LINE, "[UNK] 토큰과 [MASK]에게 [CLS][SEP]"]
SPACES = ["\u00a0", "\u3000", "\u2009", "\u202f", "\u200a", "  ", "\t", "\n", "\r\n", " \u2581 "]
INVISIBLE = ["\u200b", "\ufeff", "\u200d", "\u00ad", "\x01", "\x7f", "\u200e", "\u2060"]


def text_variants(seed=0):
    """Generated strings: each base in NFC/NFD/NFKC/NFKD, fullwidth, with odd spaces, whitespace
    runs, invisible characters at the start, middle and end, lower/upper case; plus edge cases."""
    rng = random.Random(seed)
    fullwidth = {c: chr(ord(c) + 0xFEE0) for c in map(chr, range(0x21, 0x7F))}
    variants = []
    for base in BASES:
        variants += [unicodedata.normalize(form, base) for form in ("NFC", "NFD", "NFKC", "NFKD")]
        variants += [base.translate(str.maketrans(fullwidth)), base.upper(), f"  {base}  ", f"\t{base}\n"]
        variants += [base.replace(" ", space) for space in SPACES]
        for mark in INVISIBLE:
            cut = rng.randrange(len(base) + 1)
            variants += [mark + base, base[:cut] + mark + base[cut:], base + mark]
        words = base.split(" ")
        variants.append(" ".join(rng.sample(words, len(words))))
    variants += ["", " ", "\u200b", "\ufeff서울", "\u2581서울", "ㅋ\u0301ㅋ", "ﾻﾻﾻ ￆ", "\u110f\u1172\u1172", "e\u0301\u0323"]
    return variants


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory, korean_corpus):
    """The Korean corpus plus every base string (NFC) and the emoticons, so the vocabularies know them."""
    extra = "\n".join(BASES + EMOTICONS * 3 + ["ㅋ", "ㅠ", "ㅋㅋ ㅋㅋㅋㅋ"])
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(korean_corpus.read_text(encoding="utf-8") + "\n\n" + extra + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_corpus):
    """A tokenizer of each type (and a lower-casing one), the directory that export-hf would write
    for it, and AutoTokenizer loaded from there (by default, and reading special strings as text)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    result = {}
    for name, size in zip(MODEL_TYPES + ("unigram lowercase",), (240, 400, 600, 220)):
        model_type = name.split()[0]
        tok = tokenizer_training.train([str(text_corpus)], str(root / name), vocab_size=size, model_type=model_type,
                              character_coverage=1.0, lowercase=name.endswith("lowercase"))
        exported = root / f"{name}-hf"
        hf_export.write_tokenizer(tok, str(exported), 512)
        result[name] = (tok, exported, AutoTokenizer.from_pretrained(str(exported)),
                              AutoTokenizer.from_pretrained(str(exported), split_special_tokens=True))
    return result


def _has_named_special(text):
    return any(name in text for name in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"))


def test_normaliser_keeps_emoticons_and_composes_hangul():
    for lowercase in (False, True):
        for wordpiece in (False, True):
            normalizer = normalization.build(lowercase, wordpiece)
            assert [normalizer.normalize_str(e) for e in EMOTICONS] == EMOTICONS
    normalizer = normalization.build()
    assert normalizer.normalize_str(unicodedata.normalize("NFD", "한국어 문장입니다")) == "한국어 문장입니다"
    assert normalizer.normalize_str("ﾻﾻ ￆ") == "ㅋㅋ ㅓ"  # halfwidth jamo: their compatibility jamo
    assert normalizer.normalize_str("ＡＢＣ ㈜\u3000a\u00a0 b\u200bc \u2581d\t") == "ABC (주) a bc d"
    assert normalizer.normalize_str("\u200b서울") == " 서울"  # a leading invisible run: a space
    assert normalizer.normalize_str("👨\u200d👩\u200d👧 ❤\ufe0f") == "👨\u200d👩\u200d👧 ❤\ufe0f"


def test_fast_path_texts_are_their_own_normal_form():
    """Every character `is_fixed` accepts is left alone by the normaliser, is a starter (combining
    class 0) and never the second character of a canonical composition; so any text of them with
    single inner spaces is its own normal form, and SentencePiece may encode it directly."""
    fixed = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000 and normalization.is_fixed(chr(c))]
    assert len(fixed) > 32000  # ASCII, Hangul syllables, CJK ideographs, punctuation
    seconds = {unicodedata.normalize("NFD", chr(c))[1:] for c in range(0x110000) if not 0xD800 <= c < 0xE000
               and len(unicodedata.normalize("NFD", chr(c))) == 2 and unicodedata.normalize("NFC", chr(c)) == chr(c)}
    assert not set(fixed) & seconds and not any(unicodedata.combining(c) for c in fixed)
    for lowercase in (False, True):
        chars = [c for c in fixed if normalization.is_fixed(c, lowercase)]
        assert len(chars) == len(fixed) - 26 * lowercase
        for text in (" ".join(chars), "".join(chars)):
            assert normalization.is_fixed(text, lowercase)
            assert normalization.build(lowercase).normalize_str(text) == text
    assert not any(normalization.is_fixed(t) for t in ["", " a", "a ", "a  b", "ㅋ\u0301", "a\tb", "１", "²", "㈜"])
    assert normalization.is_fixed("ㅋㅋㅋ 진짜 웃기다 ㅠㅠ")


def test_exported_tokenizer_gives_our_ids_on_generated_text(trained, capsys):
    """Kind 1: the differential test. `encode` (text as text) must equal tokenizer.json read with
    split_special_tokens=True, and `encode_query` must equal AutoTokenizer's default, except where
    the text holds a literal [CLS]/[SEP]/[PAD]/[UNK], which AutoTokenizer reads as special tokens
    (as every Hugging Face BERT tokenizer does); those divergences are counted exactly."""
    variants = text_variants()
    literal = [v for v in variants if _has_named_special(v)]
    lines = [f"{len(variants)} generated strings, {len(literal)} with a literal [CLS]/[SEP]/[PAD]/[UNK]"]
    for model_type, (tok, exported, auto, auto_split) in trained.items():
        raw = tokenizers.Tokenizer.from_file(str(exported / "tokenizer.json"))
        raw.encode_special_tokens = True
        ours = tok.encode_batch(variants)
        assert [tok.encode(v) for v in variants] == ours
        queries = [tok.encode_query(v) for v in variants]
        same_raw = sum(a == raw.encode(v, add_special_tokens=False).ids for a, v in zip(ours, variants))
        same_split = sum(a == auto_split(v, add_special_tokens=False)["input_ids"] for a, v in zip(ours, variants))
        differ = [v for q, v in zip(queries, variants) if q != auto(v, add_special_tokens=False)["input_ids"]]
        with_unk = sum(tok.unk_id in ids for ids in ours)
        lines.append(f"{model_type:17s}: encode = tokenizer.json (special strings as text) {same_raw}, "
                     f"= AutoTokenizer(split_special_tokens=True) {same_split}; encode_query = AutoTokenizer "
                     f"{len(variants) - len(differ)}; strings with an [UNK]: {with_unk}")
        assert same_raw == same_split == len(variants)
        assert differ == literal
        assert with_unk < len(variants) / 5  # the agreement is not one of [UNK]s
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_decomposed_korean_through_the_export(trained):
    text = unicodedata.normalize("NFD", "한국어 문장입니다")
    for tok, _, auto, _ in map(trained.get, MODEL_TYPES):
        ids = tok.encode(text)
        assert ids == tok.encode("한국어 문장입니다") and tok.unk_id not in ids
        assert auto(text)["input_ids"] == [tok.cls_id] + ids + [tok.sep_id]


def test_emoticons_round_trip_and_are_tokens(trained):
    """Kind 2: compatibility jamo are never composed into syllables, ㅋ is a token of every type,
    and emoticon text decodes to itself."""
    for model_type in MODEL_TYPES:
        tok, _, auto, _ = trained[model_type]
        assert tok.token_to_id("ㅋ") is not None and tok.token_to_id("ㅠ") is not None
        for text in EMOTICONS + ["ㅋㅋㅋ 진짜 웃기다 ㅠㅠ", "ㅋㅠㅠ 너무 슬퍼요 ㅎㅎ ㄷㄷ ㅇㅇ"]:
            ids = tok.encode(text)
            pieces = "".join(tok.id_to_token(i) for i in ids)
            assert tok.unk_id not in ids and "큐" not in pieces, (model_type, text, pieces)
            assert tok.decode(ids) == text
            assert auto.decode(auto(text)["input_ids"], skip_special_tokens=True) == text


def test_special_token_strings_in_text_are_text(trained):
    """Kind 3: a corpus line with [SEP] [MASK] [CLS] [PAD] gives no special id; a fill-mask query
    gives the mask id for [MASK] only."""
    for model_type in MODEL_TYPES:
        tok, _, auto, _ = trained[model_type]
        ids = tok.encode(SPECIAL_LINE)
        assert not set(ids) & set(tok.special_ids), ids
        if model_type == "wordpiece":  # WordPiece decodes punctuation as words: "[ SEP ]"
            assert tok.decode(ids).replace(" ", "") == SPECIAL_LINE.replace(" ", "")
        else:
            assert tok.decode(ids) == SPECIAL_LINE
        query = tok.encode_query(SPECIAL_LINE)
        assert [i for i in query if i in tok.special_ids] == [tok.mask_id]
        assert query[:query.index(tok.mask_id)] == tok.encode("표 [SEP] 구분")
        assert tok.encode_query("은 [MASK] 중") == tok.encode("은") + [tok.mask_id] + tok.encode("중")
        assert auto("은 [MASK] 중", add_special_tokens=False)["input_ids"] == tok.encode_query("은 [MASK] 중")
    tok = trained["unigram"][0]  # "[MASK]에게": '에게' continues the masked word
    assert tok.id_to_token(tok.encode_query("[MASK]에게")[1])[0] != tokenizer.WORD_START


def test_prepare_data_reads_special_strings_as_text_and_counts_them(tmp_path, korean_corpus, trained):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(korean_corpus.read_text(encoding="utf-8") + f"\n\n{SPECIAL_LINE}\n서울은 한국의 역사이다.\n",
                      encoding="utf-8")
    for model_type in ("unigram", "wordpiece"):
        tok, out = trained[model_type][0], tmp_path / model_type
        metadata = prepare_data([str(corpus)], tok.directory, str(out),
                                DataSettings(max_seq_length=64, eval_fraction=0.0, num_shards=1), progress=False)
        assert metadata["summary"]["repairs_and_skips"]["special_token_strings_in_text"] == 4
        import tensorflow as tf

        for record in tf.data.TFRecordDataset(str(out / "train-00000-of-00001.tfrecord")).as_numpy_iterator():
            features = tf.train.Example.FromString(record).features.feature
            ids = np.array(features["input_ids"].int64_list.value)
            segments = np.array(features["segment_ids"].int64_list.value)
            ends = [int((segments == 0).sum()) - 1, len(ids) - 1]
            assert ids[0] == tok.cls_id and (ids == tok.cls_id).sum() == 1
            assert np.flatnonzero(ids == tok.sep_id).tolist() == ends
            assert not np.isin(ids, [tok.pad_id, tok.mask_id]).any()


def test_training_is_deterministic_with_an_exact_vocabulary_size(tmp_path, text_corpus):
    """Kind 8: three runs in fresh processes (other hash seeds) give byte-identical directories,
    and --vocab-size is the vocabulary size for WordPiece too."""
    sizes = {"unigram": 240, "bpe": 400, "wordpiece": 400}
    runs = []
    for run in range(3):
        out = tmp_path / f"run{run}"
        code = (f"from bert_jax.data import tokenizer_training\nfor model_type, size in {sizes!r}.items(): tokenizer_training.train("
                f"[{str(text_corpus)!r}], {str(out)!r} + '/' + model_type, vocab_size=size, model_type=model_type, seed=7)")
        subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONHASHSEED=str(run + 1)))
        runs.append({f"{d}/{name}": (out / d / name).read_bytes() for d in MODEL_TYPES for name in os.listdir(out / d)})
    assert runs[0] == runs[1] == runs[2]
    assert (tmp_path / "run0" / "wordpiece" / "vocab.txt").read_text(encoding="utf-8").count("\n") == 400
    for model_type, size in sizes.items():
        assert tokenizer.load(str(tmp_path / "run0" / model_type)).vocab_size == size


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_vocabulary_size_bounds_are_exact_one_line_errors(tmp_path, korean_corpus, model_type):
    """Kind 9: a size below the alphabet or above what the corpus supports is a ValueError naming
    the bound and the flags; the bound it names is exact (it trains, one beyond it does not)."""
    def train(size, name):
        return tokenizer_training.train([str(korean_corpus)], str(tmp_path / name), vocab_size=size, model_type=model_type)

    with pytest.raises(ValueError, match="--vocab-size 20 is too small for the alphabet") as small:
        train(20, "small")
    assert "raise --vocab-size or lower --character-coverage" in str(small.value) and "\n" not in str(small.value)
    minimum = int(str(small.value).split("at least ")[1].split()[0])
    assert train(minimum, "min").vocab_size == minimum
    with pytest.raises(ValueError, match=f"at least {minimum} tokens"):
        train(minimum - 1, "below")
    with pytest.raises(ValueError, match="--vocab-size 100000 is too large for this corpus") as large:
        train(100000, "large")
    maximum = int(str(large.value).split("at most ")[1].split()[0])
    assert train(maximum, "max").vocab_size == maximum
    with pytest.raises(ValueError, match=f"at most {maximum} tokens"):
        train(maximum + 1, "above")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tokenizer-")]


def test_wordpiece_vocabulary_is_exact_when_words_look_like_continuations():
    """Words such as '##a' give BPE pieces that read as continuation tokens; the vocabulary stays
    duplicate-free and of the asked size."""
    lines = ["##a ##ab a##a ab b ## #a ba"] * 20
    settings = tokenizer_training.TokenizerSettings("wordpiece", 100, character_coverage=1.0)
    with pytest.raises(ValueError, match="at most") as large:
        tokenizer_training.wordpiece_vocabulary(lines, settings)
    maximum = int(str(large.value).split("at most ")[1].split()[0])
    for size in range(maximum - 3, maximum + 1):
        vocab = tokenizer_training.wordpiece_vocabulary(lines, dataclasses.replace(settings, vocab_size=size))
        assert len(vocab) == len(set(vocab)) == size and vocab[:5] == list(tokenizer.SPECIAL_TOKENS)


def test_cli_vocabulary_too_small_is_one_line(tmp_path, korean_corpus, capsys):
    assert main(["train-tokenizer", "--input", str(korean_corpus), "--output", str(tmp_path / "t"),
                 "--vocab-size", "20"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bert-jax train-tokenizer: error: --vocab-size 20 is too small")


def test_tokenizers_from_before_the_shared_normaliser_still_load(tmp_path, korean_corpus):
    """An old directory: SentencePiece's nmt_nfkc normaliser, [CLS]/[SEP]/[MASK] as user-defined
    symbols (which SentencePiece matches in text), no normaliser recorded. It loads, encodes as
    before, and reads special-token strings as text."""
    from tokenizers import normalizers

    out = tmp_path / "old"
    out.mkdir()
    sentences = [s for s in korean_corpus.read_text(encoding="utf-8").splitlines() if s]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(out / "spm"), vocab_size=100, model_type="unigram",
        normalization_rule_name="nmt_nfkc", pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece="[PAD]",
        unk_piece="[UNK]", user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto.FromString((out / "spm.model").read_bytes())
    hf_tok = tokenizer_training._hf_from_sentencepiece(
        proto, "unigram", normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    tokenizer_training._finish(hf_tok)
    hf_tok.save(str(out / "tokenizer.json"))
    (out / "bert_jax_tokenizer.json").write_text(json.dumps({"model_type": "unigram", "vocab_size": 100}))
    tok = tokenizer.load(str(out))
    old = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    text = "서울은 한국의 역사이다."
    assert tok.encode(text) == old.encode(text)
    assert old.encode("[SEP]") == [old.piece_to_id("▁"), 3]  # the old processor: a special id
    ids = tok.encode(f"서울 {SPECIAL_LINE}")  # unknown characters are [UNK], but no other special id
    assert not set(ids) & {tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id} and ids[0] == old.encode("서울")[0]
    assert tok.encode_query("서울은 [MASK] 역사이다.").count(tok.mask_id) == 1
    assert tok.decode(tok.encode(text)) == text
