"""Load tokenizers (SentencePiece unigram / BPE, or WordPiece) with BERT's special tokens.

Every tokenizer directory holds `tokenizer.json` (Hugging Face `tokenizers` format, for
`transformers` users), `bert_jax_tokenizer.json` (the settings used) and, for SentencePiece,
`spm.model` / `spm.vocab`, which we encode with (13x faster than the `tokenizers` Unigram model)
after the normaliser stored in tokenizer.json (`bert_jax.data.normalization`); WordPiece adds `vocab.txt`
and encodes with `tokenizers`. Both paths give tokenizer.json's ids (tests/test_tokenizer_text.py;
the Unigram models may differ on Viterbi ties, 1 sentence in 32,252 of Korean Wikipedia).
Training lives in `bert_jax.data.tokenizer_training`.
Special token ids are fixed: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Iterable, Sequence

import numpy as np

from bert_jax import fs
from bert_jax.data import normalization

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
MODEL_TYPES = ("unigram", "bpe", "wordpiece")
SETTINGS_FILE = "bert_jax_tokenizer.json"
WORD_START = "\u2581"  # SentencePiece's word-start marker '▁'


class Tokenizer:
    """A trained tokenizer: encode/decode, special ids, the vocabulary and word starts.

    `encode` and `encode_batch` read text as text: a literal "[SEP]" or "[MASK]" in it is spelled
    out, never a special id (special ids come only from the code that assembles examples).
    `encode_query` is for fill-mask queries, where the user's "[MASK]" is meant.
    """

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
        try:
            self._hf = HfTokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as error:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ValueError(f"{path}: not a valid tokenizer file ({str(error).splitlines()[0]})") from None
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
        # Tokenizers trained before the shared normaliser keep SentencePiece's own (nmt_nfkc).
        self._normalizer = self._hf.normalizer if self.settings.get("normalizer") == normalization.NAME else None
        self._lowercase = bool(self.settings.get("lowercase"))
        spm_file = os.path.join(directory, "spm.model")
        self._spm = _SentencePiece(fs.read_bytes(spm_file)) if fs.exists(spm_file) else None
        self._plain = None
        if self._spm is None:
            self._plain = HfTokenizer.from_str(tokenizer_json.decode("utf-8"))
            self._plain.encode_special_tokens = True  # special-token strings are text
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
        """The underlying Hugging Face `tokenizers.Tokenizer` (as tokenizer.json: special-token
        strings in text are special tokens there)."""
        return self._hf

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS]/[SEP]; special-token strings in it are text."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """Token ids of many texts at once, without [CLS]/[SEP]; special-token strings are text.
        SentencePiece models encode with `sentencepiece` after the normaliser of tokenizer.json."""
        texts = list(texts)
        if self._spm is None:
            encode = getattr(self._plain, "encode_batch_fast", self._plain.encode_batch)  # no offsets: faster
            return [e.ids for e in encode(texts, add_special_tokens=False)]
        if self._normalizer is not None:
            texts = normalization.normalize_batch(self._normalizer, texts, self._lowercase)
        return self._spm.text.encode(texts)

    def encode_query(self, text: str) -> list[int]:
        """Token ids of a fill-mask query, without [CLS]/[SEP]: every "[MASK]" in `text` is the mask
        id (it absorbs the whitespace before it, as [MASK]'s lstrip in tokenizer.json), the rest is
        text as in `encode`. Text right after a [MASK] continues its word ("[MASK]에게": '에게' is
        no word start) unless it starts with a space."""
        first, *rest = _MASK_IN_QUERY.split(text)
        ids = self._encode_segment(first, word_start=True)
        for segment in rest:
            ids += [self.mask_id] + self._encode_segment(segment, word_start=False)
        return ids

    def _encode_segment(self, text: str, word_start: bool) -> list[int]:
        if self._spm is None:
            return self.encode(text)
        if self._normalizer is not None:
            text = self._normalizer.normalize_str(text)
        starts_word = word_start or text[:1].isspace()
        return (self._spm.text if starts_word else self._spm.continuation).encode(text)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`."""
        ids = [int(i) for i in ids if not (skip_special_tokens and i in self.special_ids)]
        if self._spm is not None:
            return self._spm.with_specials.decode(ids)
        return self._hf.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        return self.vocab[token_id]


_MASK_IN_QUERY = re.compile(f"[{normalization.WHITESPACE}]*" + re.escape("[MASK]"))
_SPECIAL_STRINGS = re.compile("|".join(map(re.escape, SPECIAL_TOKENS)))


def special_strings(texts: Iterable[str]) -> list[str]:
    """The special-token strings ("[SEP]", "[MASK]", ...) in `texts`, each occurrence (`encode`
    reads them as text)."""
    return _SPECIAL_STRINGS.findall("\n".join(texts))


class _SentencePiece:
    """Processors of one spm.model: `text` never matches [CLS]/[SEP]/[MASK] in text (old models
    declared them user-defined symbols, which SentencePiece matches; here they are control symbols),
    `continuation` is `text` without the word-start marker SentencePiece puts before a text, and
    `with_specials` decodes them as "[MASK]" etc."""

    def __init__(self, model_proto: bytes):
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(model_proto)
        piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
        self.text = self._processor(proto, piece_type.CONTROL, True)
        self.continuation = self._processor(proto, piece_type.CONTROL, False)
        self.with_specials = self._processor(proto, piece_type.USER_DEFINED, True)

    @staticmethod
    def _processor(proto, special_type: int, dummy_prefix: bool):
        import sentencepiece as spm

        proto = type(proto).FromString(proto.SerializeToString())
        for piece in proto.pieces:
            if piece.piece in SPECIAL_TOKENS[2:]:
                piece.type = special_type
        proto.normalizer_spec.add_dummy_prefix = proto.normalizer_spec.add_dummy_prefix and dummy_prefix
        return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


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
