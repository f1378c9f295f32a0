"""Load tokenizers (SentencePiece unigram / BPE, or WordPiece) with BERT's special tokens.

Every tokenizer directory holds `tokenizer.json` (Hugging Face `tokenizers` format, for
`transformers` users), `bert_jax_tokenizer.json` (the settings used) and, for SentencePiece,
`spm.model` / `spm.vocab`, which we encode with (13x faster than the `tokenizers` Unigram model)
after the normaliser stored in tokenizer.json (`bert_jax.normalization`); WordPiece adds `vocab.txt`
and encodes with `tokenizers`. Both paths give tokenizer.json's ids (tests/test_tokenizer_text.py;
the Unigram models may differ on Viterbi ties, 1 sentence in 32,252 of Korean Wikipedia).
Training lives in `bert_jax.tokenizer_training` (`train` is re-exported here).
Special token ids are fixed: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from typing import Iterable, Sequence

import numpy as np

from bert_jax import normalization

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

        self.directory = directory
        path = os.path.join(directory, "tokenizer.json")
        settings_path = os.path.join(directory, SETTINGS_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{directory} is not a tokenizer directory: it lacks tokenizer.json "
                                    f"(make one with `bert-jax train-tokenizer`)")
        self._hf = HfTokenizer.from_file(path)
        if os.path.exists(settings_path):
            with open(settings_path, encoding="utf-8") as f:
                self.settings = json.load(f)
        else:  # a Hugging Face tokenizer.json from elsewhere (e.g. an imported BERT)
            self.settings = {"model_type": _infer_model_type(path), "source": "tokenizer.json"}
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
        self._spm = _SentencePiece(spm_file) if os.path.exists(spm_file) else None
        self._plain = None
        if self._spm is None:
            self._plain = HfTokenizer.from_file(path)
            self._plain.encode_special_tokens = True  # special-token strings are text
        self.vocab_size: int = self._hf.get_vocab_size()
        with open(path, "rb") as f:
            self.fingerprint = hashlib.sha256(f.read()).hexdigest()[:16]
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

    def __init__(self, model_file: str):
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        with open(model_file, "rb") as f:
            proto.ParseFromString(f.read())
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


NOT_TOKENIZER_FILES = ("config.json", "README.md")  # a Hugging Face model directory's own files


def copy_files(source: str, destination: str) -> None:
    """Copies the tokenizer files of `source` (a tokenizer directory, or a Hugging Face model
    directory that holds one) into `destination`. Model weights, the model's config.json and card,
    and subdirectories stay behind. gs:// paths go through tf.io.gfile; local ones do not import
    TensorFlow (prepare-data's workers are forked only from a process without it)."""
    if "://" in source or "://" in destination:
        import tensorflow as tf

        tf.io.gfile.makedirs(destination)
        names, isdir = tf.io.gfile.listdir(source), tf.io.gfile.isdir
        copy = functools.partial(tf.io.gfile.copy, overwrite=True)
    else:
        os.makedirs(destination, exist_ok=True)
        names, isdir, copy = os.listdir(source), os.path.isdir, shutil.copyfile
    for name in names:
        path = os.path.join(source, name)
        if name in NOT_TOKENIZER_FILES or name.endswith((".safetensors", ".bin")) or isdir(path):
            continue
        copy(path, os.path.join(destination, name))


def _infer_model_type(path: str) -> str:
    """wordpiece for a WordPiece tokenizer.json, else the SentencePiece-style '▁' word starts."""
    with open(path, encoding="utf-8") as f:
        kind = json.load(f)["model"]["type"]
    return "wordpiece" if kind == "WordPiece" else kind.lower()


def load(directory: str) -> Tokenizer:
    """Loads a tokenizer directory written by `train`."""
    return Tokenizer(directory)


from bert_jax.tokenizer_training import train  # noqa: E402  (re-exported; it imports this module)
