"""A trained model as a notebook object: `bert_jax.load(path)` -> `Model`.

`Model` wraps `bert_jax.inference.pretrained.Pretrained` (config, parameters, tokenizer, step) with a short
repr, a tokenizer call that returns padded arrays named as transformers names them, and the
inference calls a notebook wants: `embed`, `mlm_logits` and `fill_mask`.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from bert_jax import fs
from bert_jax.data import finetune_data
from bert_jax.inference import fill_mask as fill_mask_lib, pretrained
from bert_jax.models.bert import BertConfig, BertForPreTraining, BertModel

PADDING = ("longest", "max_length")


@functools.lru_cache(maxsize=8)
def _encoder_fn(config: BertConfig, output_hidden_states: bool):
    model = BertModel(config)
    return jax.jit(lambda params, inputs: model.apply({"params": params}, **inputs,
                                                      output_hidden_states=output_hidden_states))


@functools.lru_cache(maxsize=8)
def _mlm_fn(config: BertConfig):
    model = BertForPreTraining(config)
    return jax.jit(lambda params, inputs: model.apply({"params": params}, **inputs)[0])


class Model:
    """A pretrained BERT for inference in a notebook; build it with `bert_jax.load(path)`.

    Attributes: `config` (BertConfig), `params` (the parameter tree of BertForPreTraining),
    `tokenizer` (bert_jax.data.tokenizer.Tokenizer), `step` (training step of the checkpoint, 0 for a
    Hugging Face directory), `source` (the absolute path it was loaded from), `pretrained` (the
    underlying `Pretrained`, what `bert_jax.inference.fill_mask` and `bert_jax.training.finetune` take).
    """

    def __init__(self, loaded: pretrained.Pretrained, source: str):
        self.pretrained = loaded
        self.source = source

    config = property(lambda self: self.pretrained.config)
    params = property(lambda self: self.pretrained.params)
    tokenizer = property(lambda self: self.pretrained.tokenizer)
    step = property(lambda self: self.pretrained.step)

    @property
    def num_parameters(self) -> int:
        """Number of parameters (every weight of the encoder and the pretraining heads)."""
        return int(sum(np.size(leaf) for leaf in jax.tree.leaves(self.params)))

    def __repr__(self) -> str:
        c = self.config
        return (f"bert_jax.Model(L={c.num_layers}, H={c.hidden_size}, A={c.num_heads}, vocab={c.vocab_size}, "
                f"params={self.num_parameters / 1e6:.2f}M, positions={c.max_position_embeddings}, "
                f"step={self.step}, source={self.source!r})")

    def __call__(self, texts: str | list[str], pairs: str | list[str] | None = None, *,
                 max_length: int | None = None, padding: str = "longest", truncation: bool = True
                 ) -> dict[str, np.ndarray]:
        """Tokenizes texts (and optional second segments `pairs`) as `[CLS] text [SEP] (pair [SEP])`.

        Special-token strings in the texts (a literal "[SEP]") are text, as in training data.
        Returns int32 numpy arrays [B, S] `input_ids`, `attention_mask` (1 = token, 0 = padding)
        and `token_type_ids` (0 for the first segment, 1 for the pair), padded with the [PAD] id at
        the end; S is the longest row (`padding="longest"`) or `max_length` (`padding="max_length"`).
        `max_length` defaults to the model's `max_position_embeddings`; longer rows are cut
        (the longer segment first) when `truncation`, else a ValueError. Also a ValueError: an
        unknown `padding`, `max_length` < 3 or above the position table, pairs of another length.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if pairs is not None:
            pairs = [pairs] if isinstance(pairs, str) else list(pairs)
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        if padding not in PADDING:
            raise ValueError(f"padding must be one of {PADDING}, got {padding!r}")
        limit = self.config.max_position_embeddings
        max_length = limit if max_length is None else max_length
        if not 3 <= max_length <= limit:
            raise ValueError(f"max_length must be between 3 and max_position_embeddings={limit}, got {max_length}")
        rows = [{"text": t, "pair": p} for t, p in zip(texts, pairs or [None] * len(texts))]
        examples = finetune_data.encode(rows, self.tokenizer, "text", None if pairs is None else "pair",
                                        max_length, None, None)
        if examples.truncated and not truncation:
            raise ValueError(f"{examples.truncated} of {len(texts)} inputs exceed max_length={max_length} "
                             f"tokens; pass truncation=True to cut them")
        width = max_length if padding == "max_length" else int(examples.input_mask.sum(1).max(initial=0))
        return {"input_ids": examples.input_ids[:, :width], "attention_mask": examples.input_mask[:, :width],
                "token_type_ids": examples.segment_ids[:, :width]}

    def _inputs(self, texts, pairs, tokenize: dict) -> dict[str, np.ndarray]:
        return self(texts, pairs, **tokenize) if isinstance(texts, (str, list, tuple)) else dict(texts)

    def embed(self, texts, pairs=None, *, output_hidden_states: bool = False, **tokenize) -> dict[str, np.ndarray]:
        """Encoder outputs of texts (tokenized by `self(texts, pairs, **tokenize)`) or of a dict
        of arrays `self(...)` returned. Returns float32 numpy: `sequence_output` [B, S, H] (one vector
        per token, padding rows included: select them with `attention_mask`), `pooled_output` [B, H]
        (tanh dense of [CLS]), `attention_mask` [B, S]; with `output_hidden_states`, `hidden_states`,
        a tuple of num_layers + 1 arrays [B, S, H] (embeddings, then each layer)."""
        inputs = self._inputs(texts, pairs, tokenize)
        outputs = jax.device_get(_encoder_fn(self.config, output_hidden_states)(self.params["bert"], inputs))
        result = {"sequence_output": np.asarray(outputs[0], np.float32),
                  "pooled_output": np.asarray(outputs[1], np.float32), "attention_mask": inputs["attention_mask"]}
        if output_hidden_states:
            result["hidden_states"] = tuple(np.asarray(h, np.float32) for h in outputs[2])
        return result

    def mlm_logits(self, texts, pairs=None, **tokenize) -> np.ndarray:
        """Masked-LM logits float32 [B, S, vocab_size] at every position of the tokenized texts (or
        of a dict of arrays `self(...)` returned). Note "[MASK]" in a text is text here, as in
        `self(...)`; put `self.tokenizer.mask_id` into `input_ids` to mask, or use `fill_mask`."""
        return np.asarray(jax.device_get(_mlm_fn(self.config)(self.params, self._inputs(texts, pairs, tokenize))),
                          np.float32)

    def fill_mask(self, texts: str | list[str], top_k: int = 5) -> list[list[list[dict]]]:
        """Candidates for every [MASK] of every text, as `bert_jax.inference.fill_mask.fill_mask` (there
        "[MASK]" is the mask token): per text, per mask, `top_k` dicts with score, token,
        token_str and sequence. ValueError for a text without [MASK] or a bad `top_k`."""
        return fill_mask_lib.fill_mask(self.pretrained, texts, top_k)


def load(path: str, sharding: jax.sharding.Sharding | None = None) -> Model:
    """The model at `path`: a `bert-jax pretrain` workdir (latest checkpoint), an `import-hf`
    workdir, or a Hugging Face BERT directory (config.json + weights + tokenizer files). Parameters
    are numpy arrays on the host, or jax.Arrays placed on `sharding`. Raises FileNotFoundError
    when `path` is none of these, ValueError when the weights do not match the config."""
    return Model(pretrained.load(path, sharding), fs.absolute(path))
