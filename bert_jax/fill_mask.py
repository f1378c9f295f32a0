"""Fill-mask predictions in the shape of the Hugging Face fill-mask pipeline."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.model import BertForPreTraining
from bert_jax.pretrained import Pretrained

MASK = "[MASK]"


def _encode(text: str, model: Pretrained) -> list[int]:
    """[CLS] ... [SEP] ids; the user's [MASK]s are mask ids (`Tokenizer.encode_query`)."""
    tok = model.tokenizer
    if MASK not in text:
        raise ValueError(f"input has no {MASK}: {text!r}")
    return [tok.cls_id] + tok.encode_query(text) + [tok.sep_id]


@functools.lru_cache(maxsize=8)
def _predict_fn(config, pad_id: int):
    model = BertForPreTraining(config)

    @functools.partial(jax.jit, static_argnames="top_k")
    def predict(params, ids, positions, top_k):
        logits, _ = model.apply({"params": params}, ids, (ids != pad_id).astype(jnp.int32), None, positions)
        return jax.lax.top_k(jax.nn.softmax(logits, axis=-1), top_k)

    return predict


def fill_mask(model: Pretrained, texts: str | list[str], top_k: int = 5) -> list[list[list[dict]]]:
    """For each text, for each [MASK] in it, the `top_k` candidates as dicts with score, token,
    token_str and sequence (the text with that mask filled). All texts run as one batch."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
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
    scores, tokens = jax.device_get(_predict_fn(model.config, model.tokenizer.pad_id)(model.params, ids, positions, top_k))
    results = []
    for row, e in enumerate(encoded):
        per_mask = []
        for slot, position in enumerate(i for i, t in enumerate(e) if t == model.tokenizer.mask_id):
            candidates = []
            for score, token in zip(scores[row, slot], tokens[row, slot]):
                filled = list(e)
                filled[position] = int(token)
                candidates.append({"score": float(score), "token": int(token),
                                   "token_str": model.tokenizer.id_to_token(int(token)),
                                   "sequence": model.tokenizer.decode(filled[1:-1], skip_special_tokens=False)})
            per_mask.append(candidates)
        results.append(per_mask)
    return results
