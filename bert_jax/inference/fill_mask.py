"""Fill-mask predictions as the Hugging Face fill-mask pipeline gives them.

`token_str` and `sequence` are decoded the pipeline's way (the tokenizer's decoder, so no
SentencePiece word-start marker '▁'; special tokens dropped from `sequence` for a single [MASK],
kept when the text holds several). Pieces that cannot stand alone (the bare word-start piece '▁')
are never candidates; scores stay probabilities over the whole vocabulary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.data.tokenizer import WORD_START
from bert_jax.inference.pretrained import Pretrained
from bert_jax.models.bert import BertForPreTraining

MASK = "[MASK]"


def _encode(text: str, model: Pretrained) -> list[int]:
    """[CLS] ... [SEP] ids; the user's [MASK]s are mask ids (`Tokenizer.encode_query`)."""
    tok = model.tokenizer
    if MASK not in text:
        raise ValueError(f"input has no {MASK}: {text!r}")
    return [tok.cls_id] + tok.encode_query(text) + [tok.sep_id]


def _not_candidates(model: Pretrained) -> np.ndarray:
    """Ids of pieces that cannot stand alone as a prediction: the bare word-start piece '▁'."""
    bare = model.tokenizer.token_to_id(WORD_START)
    return np.array([] if bare is None else [bare], np.int32)


@functools.lru_cache(maxsize=8)
def _predict_fn(config, pad_id: int):
    model = BertForPreTraining(config)

    @functools.partial(jax.jit, static_argnames="top_k")
    def predict(params, ids, positions, excluded, top_k):
        logits, _ = model.apply({"params": params}, ids, (ids != pad_id).astype(jnp.int32), None, positions)
        probabilities = jax.nn.softmax(logits, axis=-1)
        return jax.lax.top_k(probabilities.at[..., excluded].set(-1.0), top_k)

    return predict


def fill_mask(model: Pretrained, texts: str | list[str], top_k: int = 5) -> list[list[list[dict]]]:
    """For each text, for each [MASK] in it, the `top_k` candidates as dicts with score (float
    probability), token (id), token_str (the piece decoded alone) and sequence (the text with that
    mask filled, decoded as transformers' fill-mask pipeline does). All texts run as one batch."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    excluded = _not_candidates(model)
    allowed = model.config.vocab_size - len(excluded)
    if not 1 <= top_k <= allowed:
        raise ValueError(f"--top-k must be between 1 and the {allowed} candidate tokens, got {top_k}")
    encoded = [_encode(t, model) for t in texts]
    longest = max(len(e) for e in encoded)
    model.config.check_sequence_length(longest)
    length = min(model.config.max_position_embeddings, -(-longest // 16) * 16)  # few distinct shapes
    slots = max(e.count(model.tokenizer.mask_id) for e in encoded)
    ids = np.full((len(texts), length), model.tokenizer.pad_id, np.int32)
    positions = np.zeros((len(texts), slots), np.int32)
    for row, e in enumerate(encoded):
        ids[row, :len(e)] = e
        where = [i for i, t in enumerate(e) if t == model.tokenizer.mask_id]
        positions[row, :len(where)] = where
    predict = _predict_fn(model.config, model.tokenizer.pad_id)
    scores, tokens = jax.device_get(predict(model.params, ids, positions, excluded, top_k))
    decode = model.tokenizer.hf_tokenizer.decode  # the decoder transformers' fast tokenizer runs
    results = []
    for row, e in enumerate(encoded):
        masks = [i for i, t in enumerate(e) if t == model.tokenizer.mask_id]
        per_mask = []
        for slot, position in enumerate(masks):
            candidates = []
            for score, token in zip(scores[row, slot], tokens[row, slot]):
                filled = list(e)
                filled[position] = int(token)
                candidates.append({"score": float(score), "token": int(token),
                                   "token_str": decode([int(token)], skip_special_tokens=False),
                                   "sequence": decode(filled, skip_special_tokens=len(masks) == 1)})
            per_mask.append(candidates)
        results.append(per_mask)
    return results
