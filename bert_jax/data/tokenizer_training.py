"""`train-tokenizer`: SentencePiece unigram / BPE, or WordPiece, on text normalised by `normalization`.

All three are trained by SentencePiece's C++ trainer, which is deterministic: the same corpus,
settings and seed give a byte-identical directory. (WordPiece vocabularies are BPE merges, as in
Hugging Face's WordPieceTrainer, whose Rust trainer breaks count ties in hash order and so gives
another vocabulary on every run.) `--vocab-size` is exact for all three; a corpus too small or an
alphabet too large for it is a one-line error saying the bound and the flag to change.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import re
from typing import Sequence

from bert_jax import fs
from bert_jax.data import normalization
from bert_jax.data.tokenizer import (CLS_ID, MODEL_TYPES, PAD_ID, SEP_ID, SETTINGS_FILE, SPECIAL_TOKENS, UNK_ID,
                                     WORD_START, Tokenizer, load, special_strings)


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


class _VocabSizeError(Exception):
    """SentencePiece refused the vocabulary size; `bound` is its minimum (too small) or maximum."""

    def __init__(self, too_small: bool, bound: int):
        super().__init__(too_small, bound)
        self.too_small, self.bound = too_small, bound


def _sample_sentences(inputs: list[str], size: int, seed: int, stats, progress: bool = False) -> list[str]:
    """Reservoir sample of `size` sentences over the whole corpus (bounded memory); `progress`
    shows a bar of the documents read."""
    from bert_jax.data.corpus import read_documents
    from bert_jax.progress import progress_bar

    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    with progress_bar(None, "doc", progress, desc="reading the corpus") as bar:
        for document in read_documents(inputs, stats):
            bar.update()
            seen = _reservoir_add(sample, document, seen, size, rng)
    return sample


def _reservoir_add(sample: list[str], document: list[str], seen: int, size: int, rng: random.Random) -> int:
    """Adds the sentences of `document` to the reservoir `sample`; returns the sentences seen."""
    for sentence in document:
        seen += 1
        if len(sample) < size:
            sample.append(sentence)
        else:
            j = rng.randrange(seen)
            if j < size:
                sample[j] = sentence
    return seen


def _sentencepiece_proto(sentences: list[str], vocab_size: int, model_type: str, character_coverage: float,
                         **options):
    """Trains SentencePiece on already normalised sentences; returns its ModelProto. Raises
    `_VocabSizeError` with SentencePiece's bound when `vocab_size` does not fit the corpus."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, normalization_rule_name="identity",
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]",
            # Control symbols, unlike user-defined ones, are never matched in text: a literal
            # "[SEP]" in the corpus is text (kind 3 of issue 15).
            control_symbols=list(SPECIAL_TOKENS[2:]),
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=os.cpu_count() or 1,
            max_sentence_length=1 << 16, minloglevel=2, **options)
    except RuntimeError as error:
        if found := re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(error)):
            raise _VocabSizeError(True, int(found[1])) from None
        if found := re.search(r"Please set it to a value <= (\d+)", str(error)):
            raise _VocabSizeError(False, int(found[1])) from None
        raise
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto


def _vocab_size_error(settings: TokenizerSettings, too_small: bool, bound: int) -> ValueError:
    if too_small:
        return ValueError(f"--vocab-size {settings.vocab_size} is too small for the alphabet of this corpus: "
                          f"{settings.model_type} needs at least {bound} tokens here; raise --vocab-size or "
                          f"lower --character-coverage (now {settings.character_coverage})")
    return ValueError(f"--vocab-size {settings.vocab_size} is too large for this corpus: {settings.model_type} "
                      f"can have at most {bound} tokens here; lower --vocab-size or give more text")


def _train_sentencepiece(sentences: list[str], settings: TokenizerSettings, output: str):
    normalizer = normalization.build(settings.lowercase)
    normalized = [s for s in normalization.normalize_batch(normalizer, sentences, settings.lowercase) if s]
    # SentencePiece drops "[SEP]" etc. from training text, but we encode them as text: their
    # characters join the vocabulary. (Else, besides [UNK]s, the `tokenizers` Unigram model would
    # match the special pieces in text read with split_special_tokens=True, since unknown characters
    # cost even more.)
    special_chars = "".join(sorted(set("".join(special_strings(normalized)))))
    try:
        proto = _sentencepiece_proto(normalized, settings.vocab_size, settings.model_type,
                                     settings.character_coverage, required_chars=special_chars)
    except _VocabSizeError as error:
        raise _vocab_size_error(settings, error.too_small, error.bound) from None
    with open(os.path.join(output, "spm.model"), "wb") as f:
        f.write(proto.SerializeToString())
    with open(os.path.join(output, "spm.vocab"), "w", encoding="utf-8") as f:
        f.writelines(f"{p.piece}\t{p.score:g}\n" for p in proto.pieces)
    return _hf_from_sentencepiece(proto, settings.model_type, normalizer)


def _hf_from_sentencepiece(proto, model_type: str, normalizer):
    """The `tokenizers` equivalent of a SentencePiece model trained on `normalizer`'s output:
    the same normaliser, SentencePiece's word starts, the same pieces and ids."""
    from tokenizers import Tokenizer as HfTokenizer, decoders, models, pre_tokenizers

    pieces = [(p.piece, p.score) for p in proto.pieces]
    if model_type == "unigram":
        # Special pieces sit far below every other piece, so that with split_special_tokens=True
        # (special tokens read as text) the Unigram model spells "[SEP]" out, as SentencePiece does,
        # when its characters are in the vocabulary (see `_train_sentencepiece`).
        lowest = min(score for piece, score in pieces if piece not in SPECIAL_TOKENS)
        pieces = [(piece, lowest - 1000.0 if piece in SPECIAL_TOKENS else score) for piece, score in pieces]
        model = models.Unigram(pieces, unk_id=UNK_ID, byte_fallback=False)
    else:
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        model = models.BPE(vocab, _bpe_merges(vocab), unk_token="[UNK]", fuse_unk=True, byte_fallback=False)
    tokenizer = HfTokenizer(model)
    tokenizer.normalizer = normalizer
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


def _word_lines(sentences: list[str], normalizer, pre_tokenizer, per_line: int = 64) -> list[str]:
    """The sentences as BERT words (normalised, split at whitespace and punctuation), joined by
    spaces, `per_line` sentences a line (fewer calls into `tokenizers`)."""
    lines = []
    for start in range(0, len(sentences), per_line):
        text = normalizer.normalize_str(" ".join(sentences[start:start + per_line]))
        lines.append(" ".join(word for word, _ in pre_tokenizer.pre_tokenize_str(text)))
    return [line for line in lines if line]


def wordpiece_vocabulary(word_lines: list[str], settings: TokenizerSettings) -> list[str]:
    """A WordPiece vocabulary of exactly `settings.vocab_size` tokens: the specials, each character
    of the alphabet (by `character_coverage`) that starts a word, as itself, and each that continues
    one, as '##c' (as Hugging Face's trainer), then the most frequent BPE merges. SentencePiece BPE
    learns the merges on the words: a piece '▁xy' becomes the word start 'xy', a piece 'xy' the
    continuation '##xy'. Raises ValueError naming the bound when the size does not fit the corpus."""
    distinct = set().union(*map(set, word_lines))
    starting = set().union(*(_WORD_START_CHAR.findall(line) for line in word_lines))
    continuing = set().union(*(_WORD_INNER_CHAR.findall(line) for line in word_lines))
    # A BPE model has 6 + |alphabet| + merges pieces (5 specials and '▁'), and its '▁c' merges only
    # repeat word-start characters: this many pieces always give enough merges.
    size = settings.vocab_size + 1 + len(distinct)
    options = dict(split_by_unicode_script=False, split_by_number=False)  # as BERT's pre-tokenizer
    try:
        proto = _sentencepiece_proto(word_lines, size, "bpe", settings.character_coverage, **options)
    except _VocabSizeError as error:  # at SentencePiece's bound; the checks below say what fits
        proto = _sentencepiece_proto(word_lines, error.bound, "bpe", settings.character_coverage, **options)
    normal = [p for p in proto.pieces if p.type == p.NORMAL and p.piece != WORD_START]
    alphabet = [p.piece for p in normal if len(p.piece) == 1]
    merged = [p.piece[1:] if p.piece.startswith(WORD_START) else "##" + p.piece
              for p in sorted((p for p in normal if len(p.piece) > 1), key=lambda p: -p.score)
              if not (p.piece.startswith(WORD_START) and len(p.piece) == 2)]
    base = [*SPECIAL_TOKENS, *(c for c in alphabet if c in starting), *("##" + c for c in alphabet if c in continuing)]
    merged = [token for token in dict.fromkeys(merged) if token not in set(base)]  # a word '##a' gives '##a' again
    if settings.vocab_size < len(base):
        raise _vocab_size_error(settings, True, len(base))
    if settings.vocab_size > len(base) + len(merged):
        raise _vocab_size_error(settings, False, len(base) + len(merged))
    return base + merged[:settings.vocab_size - len(base)]


_WORD_START_CHAR = re.compile(r"(?<!\S)\S")
_WORD_INNER_CHAR = re.compile(r"(?<=\S)\S")


def _train_wordpiece(sentences: list[str], settings: TokenizerSettings, output: str):
    from tokenizers import Tokenizer as HfTokenizer, decoders, models, pre_tokenizers

    normalizer = normalization.build(settings.lowercase, wordpiece=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = wordpiece_vocabulary(_word_lines(sentences, normalizer, pre_tokenizer), settings)
    tokenizer = HfTokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]",
                                             continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    with open(os.path.join(output, "vocab.txt"), "w", encoding="utf-8") as f:
        f.writelines(token + "\n" for token in vocab)
    return tokenizer


def _finish(tokenizer) -> None:
    """Declares the special tokens and BERT's [CLS] A [SEP] B [SEP] template."""
    from tokenizers import AddedToken, processors

    # [MASK] swallows the space before it, so "은 [MASK] 중" asks for a word-start piece ("▁조선").
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=t == "[MASK]")
                                  for t in SPECIAL_TOKENS])
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != token_id:
            raise AssertionError(f"special token {token} got id {tokenizer.token_to_id(token)}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])


def _save(tokenizer, path: str) -> None:
    """tokenizer.save, whose failures (a bare Exception from Rust) become an OSError naming the file."""
    try:
        tokenizer.save(path)
    except Exception as error:  # noqa: BLE001 (tokenizers raises a bare Exception)
        raise OSError(f"{path} could not be written ({error}): the disk is full or the file size "
                      f"limited; nothing was written to the output") from None


def train(inputs: Sequence[str], output: str, vocab_size: int = 32000, model_type: str = "unigram",
          character_coverage: float = 0.9995, input_sentence_size: int = 2_000_000,
          lowercase: bool = False, seed: int = 0, progress: bool = False) -> Tokenizer:
    """Trains a tokenizer on raw text (plain text, JSON lines or tfds:) and writes `output`.

    A reservoir sample of `input_sentence_size` sentences bounds memory on huge corpora.
    The directory is written under a temporary name and renamed when complete (uploaded with
    its settings file last when `output` is a URL). `progress` shows a bar while the corpus is read
    and a line when the model training starts.
    """
    from bert_jax.data.corpus import CorpusStats, expand_inputs

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
        sentences = _sample_sentences(files, input_sentence_size, seed, stats, progress)
        if not sentences:
            raise ValueError(f"--input {' '.join(inputs)}: the corpus holds no text")
        if progress:  # on stdout: stderr holds only the bar and, on failure, the one-line error
            print(f"training a {vocab_size}-token {model_type} model on {len(sentences)} sentences", flush=True)
        if model_type == "wordpiece":
            tokenizer = _train_wordpiece(sentences, settings, staging)
        else:
            tokenizer = _train_sentencepiece(sentences, settings, staging)
        _finish(tokenizer)
        _save(tokenizer, os.path.join(staging, "tokenizer.json"))
        record = dataclasses.asdict(settings) | {"vocab_size": tokenizer.get_vocab_size(),
                                                 "normalizer": normalization.NAME, "corpus": dict(stats)}
        with open(os.path.join(staging, SETTINGS_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False, indent=2)
        load(staging)  # a file written incompletely (e.g. a full disk) fails here, before the rename
    return load(output)
