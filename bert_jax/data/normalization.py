"""The one text normaliser of every tokenizer we train: NFKC that keeps Hangul compatibility jamo.

It is a `tokenizers` normalizer, stored in `tokenizer.json`, so `transformers` users run exactly
the code that our own encoders run (see `Tokenizer.encode_batch`) and that trained the vocabulary.
Steps, in order:

1. Hangul compatibility jamo (U+3131-U+318E, e.g. the emoticons ㅋㅋ ㅠㅠ) and their halfwidth
   forms (U+FFA0-U+FFDC) are swapped for private-use placeholders (U+F0000-U+F005D), so that NFKC
   neither turns them into conjoining jamo nor composes those into syllables (ㅋㅠㅠ stays ㅋㅠㅠ,
   not 큐 + ᅲ). (Those private-use characters in the input come out as jamo.)
2. Invisible characters that carry no text are removed: C0/C1 controls other than whitespace,
   soft hyphen, zero-width space, word joiner, byte-order mark, bidirectional marks. Zero-width
   (non-)joiners and variation selectors stay: emoji sequences need them. A run of them that starts
   the text becomes a space instead, since `tokenizers`' Metaspace marks the first word of a text as
   a word start only when the normalised text still starts at offset 0.
3. NFKC: decomposed (NFD) Hangul is composed, fullwidth forms, ligatures, ㈜ and odd spaces folded.
4. The placeholders become compatibility jamo again.
5. Every run of whitespace (and SentencePiece's '▁', which would otherwise mark words) becomes one
   space; trailing whitespace is dropped. Leading whitespace stays (see 2.), it only marks the
   first word as a word start, which it is anyway.
6. Optionally lower-casing; for WordPiece, BERT's spaces around CJK ideographs.

The placeholder swaps are `Precompiled` character maps built with SentencePiece's own builder;
they look whole grapheme clusters up first, so a combining mark of 2 UTF-8 bytes right after a
compatibility jamo is dropped (the only loss; identical in every path).
"""

from __future__ import annotations

import re
import unicodedata

NAME = "nfkc-keep-compat-jamo/1"  # recorded in bert_jax_tokenizer.json

_COMPAT_JAMO = [chr(c) for c in range(0x3131, 0x318F)]
_PLACEHOLDERS = [chr(0xF0000 + i) for i in range(len(_COMPAT_JAMO))]
_HALFWIDTH_JAMO = [chr(c) for c in range(0xFFA0, 0xFFDD) if unicodedata.decomposition(chr(c)).startswith("<narrow>")]
_INVISIBLE = "\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u00ad\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
# Unicode White_Space: what Rust's char::is_whitespace (and so `tokenizers`) calls whitespace.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

# Characters that every step above leaves alone (lower-casing too, but for A-Z) and that never
# compose with a preceding character, so a text made of them, with single inner spaces, is its own
# normal form (tested over every one of them against the `tokenizers` normaliser): ASCII, Latin-1
# and general punctuation and symbols, arrows, shapes, CJK punctuation, kana, compatibility jamo,
# CJK ideographs and Hangul syllables.
_FIXED = ("\x21-\x7e\u00a1-\u00a7\u00a9\u00ab\u00ac\u00ae\u00b0\u00b1\u00b6\u00b7\u00bb\u00bf\u00d7\u00f7"
          "\u2010\u2012-\u2016\u2018-\u2023\u2027\u2030\u2032\u2035\u203b\u2190-\u21ff\u25a0-\u25ff\u2600-\u26ff"
          "\u3001-\u3003\u3008-\u301f\u3041-\u3096\u30a1-\u30fa\u30fc\u3131-\u318e\u4e00-\u9fff\uac00-\ud7a3")
_OUTSIDE_FIXED = re.compile(f"[^ {_FIXED}]")
_OUTSIDE_FIXED_LOWERCASE = re.compile(f"[^ {_FIXED}]|[A-Z]")


def _charsmap(mapping: dict[str, str]) -> bytes:
    """SentencePiece's precompiled character map for `mapping` (as `tokenizers`' Precompiled reads it)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    spm.set_min_log_level(2)  # the builder logs every map it compiles
    spec = sentencepiece_model_pb2.NormalizerSpec()
    spec.ParseFromString(spm.SentencePieceNormalizer(norm_map=sorted(mapping.items())).serialized_normalizer_spec())
    return spec.precompiled_charsmap


def build(lowercase: bool = False, wordpiece: bool = False):
    """The `tokenizers.normalizers.Sequence` described in the module docstring."""
    from tokenizers import Regex, normalizers

    placeholder = dict(zip(_COMPAT_JAMO, _PLACEHOLDERS))
    protect = placeholder | {h: placeholder[_narrow_to_compat(h)] for h in _HALFWIDTH_JAMO}
    steps = [normalizers.Precompiled(_charsmap(protect)),
             normalizers.Replace(Regex(f"\\A[{_INVISIBLE}]+"), " "),
             normalizers.Replace(Regex(f"[{_INVISIBLE}]"), ""),
             normalizers.NFKC(),
             normalizers.Precompiled(_charsmap(dict(zip(_PLACEHOLDERS, _COMPAT_JAMO)))),
             normalizers.Replace(Regex(f"[{WHITESPACE}\u2581]+"), " "),
             normalizers.Strip(left=False, right=True)]
    if lowercase:
        steps.append(normalizers.Lowercase())
    if wordpiece:
        steps.append(normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=True,
                                                strip_accents=False, lowercase=False))
    return normalizers.Sequence(steps)


def _narrow_to_compat(halfwidth: str) -> str:
    """The compatibility jamo of a halfwidth jamo (its '<narrow>' decomposition)."""
    return chr(int(unicodedata.decomposition(halfwidth).split()[1], 16))


def is_fixed(text: str, lowercase: bool = False) -> bool:
    """Whether `text` is non-empty and provably its own normal form under `build(lowercase)`
    (a cheap test that lets SentencePiece encode it directly)."""
    outside = _OUTSIDE_FIXED_LOWERCASE if lowercase else _OUTSIDE_FIXED
    return bool(text) and text[0] != " " != text[-1] and "  " not in text and not outside.search(text)


def normalize_batch(normalizer, texts: list[str], lowercase: bool = False) -> list[str]:
    """`normalizer.normalize_str` of each text, skipping texts that are their own normal form."""
    return [t if is_fixed(t, lowercase) else normalizer.normalize_str(t) for t in texts]
