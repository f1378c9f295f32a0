"""Train and load tokenizers (SentencePiece unigram / BPE, or WordPiece) with BERT's special tokens.

Every tokenizer directory holds `tokenizer.json` (Hugging Face `tokenizers` format, for
`transformers` users), `bert_jax_tokenizer.json` (the settings used) and, for SentencePiece,
`spm.model` / `spm.vocab`, which we encode with (13x faster than the `tokenizers` Unigram model;
the two agree on all but Viterbi ties, 1 sentence in 32,252 of Korean Wikipedia); WordPiece adds
`vocab.txt` and encodes with `tokenizers`.
Special token ids are fixed: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import random
from typing import Iterable, Sequence

import numpy as np

from bert_jax import fs

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
MODEL_TYPES = ("unigram", "bpe", "wordpiece")
SETTINGS_FILE = "bert_jax_tokenizer.json"
WORD_START = "\u2581"  # SentencePiece's word-start marker '▁'


@dataclasses.dataclass
class TokenizerSettings:
    """How a tokenizer was trained; written next to it."""

    model_type: str
    vocab_size: int
    character_coverage: float = 0.9995
    input_sentence_size: int = 2_000_000
    lowercase: bool = False
    seed: int = 0
    inputs: Sequence[str] = ()


def _sample_sentences(inputs: list[str], size: int, seed: int, stats) -> list[str]:
    """Reservoir sample of `size` sentences over the whole corpus (bounded memory)."""
    from bert_jax.corpus import read_documents

    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for document in read_documents(inputs, stats):
        for sentence in document:
            seen += 1
            if len(sample) < size:
                sample.append(sentence)
            else:
                j = rng.randrange(seen)
                if j < size:
                    sample[j] = sentence
    return sample


def _train_sentencepiece(sentences: list[str], settings: TokenizerSettings, output: str):
    import sentencepiece as spm

    try:
        _run_sentencepiece_trainer(spm, sentences, settings, output)
    except RuntimeError as error:
        if "Vocabulary size too high" in str(error):
            raise ValueError(f"--vocab-size {settings.vocab_size} is too large for this corpus: "
                             f"{str(error).split('] ')[-1]}") from None
        raise
    model_file = os.path.join(output, "spm.model")
    try:  # the trainer ignores write errors: a full disk leaves a truncated spm.model and no error
        spm.SentencePieceProcessor(model_file=model_file)
    except (RuntimeError, OSError):
        raise OSError(f"{model_file} is incomplete ({os.path.getsize(model_file)} bytes) after training: "
                      f"the disk is full or the file size limited; nothing was written to the output") from None
    return _hf_from_sentencepiece(model_file, settings.model_type)


def _run_sentencepiece_trainer(spm, sentences: list[str], settings: TokenizerSettings, output: str):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=os.path.join(output, "spm"),
        vocab_size=settings.vocab_size, model_type=settings.model_type,
        character_coverage=settings.character_coverage,
        # NFKC keeps Hangul syllables composed; '_cf' adds case folding.
        normalization_rule_name="nmt_nfkc_cf" if settings.lowercase else "nmt_nfkc",
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]",
        user_defined_symbols=list(SPECIAL_TOKENS[2:]),
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=os.cpu_count() or 1,
        max_sentence_length=1 << 16, minloglevel=2)


def _hf_from_sentencepiece(model_file: str, model_type: str):
    """Builds the `tokenizers` equivalent of a SentencePiece model (same normaliser, same ids)."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if model_type == "unigram":
        model = models.Unigram(pieces, unk_id=UNK_ID, byte_fallback=False)
    else:
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        model = models.BPE(vocab, _bpe_merges(vocab), unk_token="[UNK]", fuse_unk=True,
                           byte_fallback=False)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
        normalizers.Replace(Regex(" {2,}"), " ")])
    # 'first': like SentencePiece, only the start of the text gets the word-start marker, not the
    # text right after a special token ("[MASK]에게" keeps '에게' a continuation piece).
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="first")
    return tokenizer


def _bpe_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Recovers BPE merges from a SentencePiece BPE vocabulary (ranked by the merged piece's id)."""
    merges = []
    for piece, rank in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab and piece not in SPECIAL_TOKENS:
                merges.append((rank, vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def _train_wordpiece(sentences: list[str], settings: TokenizerSettings, output: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    # NFKC first; strip_accents=False, since accent stripping decomposes Hangul into jamo.
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                   lowercase=settings.lowercase)])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=settings.vocab_size, special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=_alphabet_size(sentences, settings.character_coverage),
        continuing_subword_prefix="##", show_progress=False)
    tokenizer.train_from_iterator(sentences, trainer=trainer, length=len(sentences))
    if tokenizer.get_vocab_size() > settings.vocab_size:
        raise ValueError(f"--vocab-size {settings.vocab_size} is too small for the alphabet of this "
                         f"corpus: WordPiece needs {tokenizer.get_vocab_size()} tokens "
                         f"(or lower --character-coverage)")
    with open(os.path.join(output, "vocab.txt"), "w", encoding="utf-8") as f:
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        f.writelines(token + "\n" for token, _ in vocab)
    return tokenizer


def _alphabet_size(sentences: list[str], coverage: float) -> int:
    """Fewest characters that cover `coverage` of all character occurrences (as SentencePiece)."""
    counts = sorted(collections.Counter(ch for s in sentences for ch in s if not ch.isspace()).values(),
                    reverse=True)
    covered = np.cumsum(counts) / max(1, sum(counts))
    return int(np.searchsorted(covered, coverage) + 1)


def _finish(tokenizer) -> None:
    """Declares the special tokens and BERT's [CLS] A [SEP] B [SEP] template."""
    from tokenizers import AddedToken, processors

    # [MASK] swallows the space before it, so "은 [MASK] 중" asks for a word-start piece ("▁조선").
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=t == "[MASK]")
                                  for t in SPECIAL_TOKENS])
    for token, token_id in zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS))):
        if tokenizer.token_to_id(token) != token_id:
            raise AssertionError(f"special token {token} got id {tokenizer.token_to_id(token)}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])


def train(inputs: Sequence[str], output: str, vocab_size: int = 32000, model_type: str = "unigram",
          character_coverage: float = 0.9995, input_sentence_size: int = 2_000_000,
          lowercase: bool = False, seed: int = 0) -> "Tokenizer":
    """Trains a tokenizer on raw text (plain text, JSON lines or tfds:) and writes `output`.

    A reservoir sample of `input_sentence_size` sentences bounds memory on huge corpora.
    The directory is written under a temporary name and renamed when complete (uploaded with
    its settings file last when `output` is a URL).
    """
    from bert_jax.corpus import CorpusStats, expand_inputs

    output = fs.absolute(output)
    if model_type not in MODEL_TYPES:
        raise ValueError(f"--model-type must be one of {MODEL_TYPES}, got {model_type!r}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"--vocab-size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    if fs.exists(os.path.join(output, SETTINGS_FILE)):
        raise FileExistsError(f"--output {output} already holds a tokenizer; choose another directory")
    files = expand_inputs(inputs)
    settings = TokenizerSettings(model_type, vocab_size, character_coverage, input_sentence_size,
                                 lowercase, seed, files)
    stats = CorpusStats()
    with fs.staged_output(output, SETTINGS_FILE, "a tokenizer") as staging:
        sentences = _sample_sentences(files, input_sentence_size, seed, stats)
        if not sentences:
            raise ValueError(f"--input {' '.join(inputs)}: the corpus holds no text")
        if model_type == "wordpiece":
            tokenizer = _train_wordpiece(sentences, settings, staging)
        else:
            tokenizer = _train_sentencepiece(sentences, settings, staging)
        _finish(tokenizer)
        tokenizer.save(os.path.join(staging, "tokenizer.json"))
        record = dataclasses.asdict(settings) | {"vocab_size": tokenizer.get_vocab_size(),
                                                 "corpus": dict(stats)}
        with open(os.path.join(staging, SETTINGS_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False, indent=2)
        load(staging)  # a file the trainer wrote incompletely (e.g. a full disk) fails here, before the rename
    return load(output)


class Tokenizer:
    """A trained tokenizer: encode/decode, special ids, the vocabulary and word starts."""

    def __init__(self, directory: str):
        from tokenizers import Tokenizer as HfTokenizer

        directory = fs.absolute(directory)
        self.directory = directory
        path = os.path.join(directory, "tokenizer.json")
        settings_path = os.path.join(directory, SETTINGS_FILE)
        if not fs.exists(path):
            raise FileNotFoundError(f"{directory} is not a tokenizer directory: it lacks tokenizer.json "
                                    f"(make one with `bert-jax train-tokenizer`)")
        tokenizer_json = fs.read_bytes(path)  # from bytes: the directory may be remote
        self._hf = HfTokenizer.from_str(tokenizer_json.decode("utf-8"))
        if fs.exists(settings_path):
            self.settings = json.loads(fs.read_text(settings_path))
        else:  # a Hugging Face tokenizer.json from elsewhere (e.g. an imported BERT)
            self.settings = {"model_type": _infer_model_type(tokenizer_json), "source": "tokenizer.json"}
        self.model_type: str = self.settings["model_type"]
        ids = {name: self._hf.token_to_id(name) for name in SPECIAL_TOKENS}
        if None in ids.values():
            raise ValueError(f"{path}: the vocabulary lacks BERT special token(s) "
                             f"{[n for n, i in ids.items() if i is None]}")
        self.special_ids_by_name = ids
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = ids.values()
        self.special_ids = tuple(sorted(ids.values()))
        self._spm = None
        if fs.exists(os.path.join(directory, "spm.model")):
            import sentencepiece as spm

            self._spm = spm.SentencePieceProcessor(model_proto=fs.read_bytes(os.path.join(directory, "spm.model")))
        self.vocab_size: int = self._hf.get_vocab_size()
        self.fingerprint = hashlib.sha256(tokenizer_json).hexdigest()[:16]
        self.vocab: list[str] = [self._hf.id_to_token(i) for i in range(self.vocab_size)]
        self.is_word_start = np.array([self._starts_word(t) for t in self.vocab], dtype=bool)

    def _starts_word(self, token: str | None) -> bool:
        if token is None or token in SPECIAL_TOKENS:
            return True
        if self.model_type == "wordpiece":
            return not token.startswith("##")
        return token.startswith(WORD_START)

    @property
    def hf_tokenizer(self):
        """The underlying Hugging Face `tokenizers.Tokenizer`."""
        return self._hf

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS]/[SEP]."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """Token ids of many texts at once, without [CLS]/[SEP]."""
        if self._spm is not None:
            return self._spm.encode(list(texts))
        encode = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)  # no offsets: faster
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`."""
        ids = [int(i) for i in ids if not (skip_special_tokens and i in self.special_ids)]
        if self._spm is not None:
            return self._spm.decode(ids)
        return self._hf.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        return self.vocab[token_id]


# The files a tokenizer consists of: ours, and those of Hugging Face fast and slow BERT tokenizers.
# Everything else in a model directory (weights in any format, the model's config and card) stays.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "spm.model", "spm.vocab", SETTINGS_FILE)


def copy_files(source: str, destination: str) -> None:
    """Copies the tokenizer files (`TOKENIZER_FILES`) of `source` (a tokenizer directory, or a
    Hugging Face model directory that holds one) into `destination`. A file that is a symbolic
    link out of `source` is refused (ValueError), except a Hugging Face cache snapshot's links into
    its own repository's blobs. Either side may be a URL (`bert_jax.fs`)."""
    present = [name for name in TOKENIZER_FILES if fs.exists(os.path.join(source, name))]
    for name in present:  # every file is checked before anything is written
        if not fs.is_url(source):
            _check_inside(os.path.join(source, name), source)
    fs.makedirs(destination)
    for name in present:
        fs.copy(os.path.join(source, name), os.path.join(destination, name))


def _check_inside(path: str, source: str) -> None:
    """Refuses a symbolic link whose target leaves `source` (or, for a Hugging Face cache snapshot
    `.../models--org--name/snapshots/REVISION`, leaves `.../models--org--name`)."""
    root = os.path.realpath(source)
    if os.path.basename(os.path.dirname(root)) == "snapshots":
        root = os.path.dirname(os.path.dirname(root))
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ValueError(f"{path} is a symbolic link to {os.path.realpath(path)}, outside {source}; "
                         f"copy the file itself into the directory")


def _infer_model_type(tokenizer_json: bytes) -> str:
    """wordpiece for a WordPiece tokenizer.json, else the SentencePiece-style '▁' word starts."""
    kind = json.loads(tokenizer_json)["model"]["type"]
    return "wordpiece" if kind == "WordPiece" else kind.lower()


def load(directory: str) -> Tokenizer:
    """Loads a tokenizer directory written by `train`."""
    return Tokenizer(directory)
