"""BERT in Flax linen: embeddings, attention, post-LN (or pre-LN) encoder, pooler, MLM and NSP heads.

Parameters carry logical axis names ('vocab', 'embed', 'heads', 'kv', 'mlp', 'layers') that
`bert_jax.training.sharding` maps onto a device mesh. Activations are constrained at block boundaries
to ('batch', 'length', 'embed').
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import backend

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder; validated on construction."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype; 'auto' = bfloat16 on TPU/GPU, float32 on CPU
    param_dtype: str = "float32"
    scan_layers: bool = False  # nn.scan over the layers: one compiled layer body
    remat: bool = False  # recompute layer activations in the backward pass
    attention_impl: str = "auto"  # auto, xla or cudnn (see backend.attention_implementation)
    embedding_lookup: str = "gather"  # word embeddings: 'gather' rows, or 'one_hot' matmul (TPU)
    pre_layer_norm: bool = False  # LayerNorm before attention / feed-forward, one after the last layer

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"BertConfig.hidden_size={self.hidden_size} is not divisible by "
                             f"num_heads={self.num_heads}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name, allowed in (("dtype", ["auto", *_DTYPES]), ("param_dtype", list(_DTYPES)),
                              ("attention_impl", ["auto", "xla", "cudnn"]),
                              ("embedding_lookup", ["gather", "one_hot"])):
            if getattr(self, name) not in allowed:
                raise ValueError(f"BertConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.attention_impl == "cudnn" and self.attention_dropout > 0:
            raise ValueError("BertConfig.attention_impl='cudnn' needs attention_dropout=0: cuDNN's fused "
                             f"attention has no per-step dropout (got {self.attention_dropout})")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BertConfig:
        """Builds a config from a mapping (e.g. an ml_collections `config.model`)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown model config field(s) {unknown}; expected some of {sorted(fields)}")
        return cls(**dict(values))

    def check_sequence_length(self, length: int) -> None:
        """Raises if `length` tokens do not fit the position embeddings."""
        if length > self.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings="
                             f"{self.max_position_embeddings}")

    @property
    def compute_dtype(self):
        """The compute dtype; 'auto' resolves for the backend being traced for (`bert_jax.backend`)."""
        return _DTYPES[backend.compute_dtype_name(self.dtype, backend.current())]

    @property
    def params_dtype(self):
        return _DTYPES[self.param_dtype]


def _init(config: BertConfig, axes: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


def _zeros(axes: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps, dtype=config.compute_dtype, param_dtype=config.params_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=_zeros(("embed",)), name=name)


class Dense(nn.Module):
    """y = x . kernel + bias, contracting the last `in_dims` axes of x; `axes` names the kernel's
    axes (inputs then outputs). Written out rather than nn.DenseGeneral, whose flattened kernel
    initialisation cannot carry multi-axis logical names under a mesh."""

    config: BertConfig
    features: tuple[int, ...]
    axes: tuple[str | None, ...]
    in_dims: int = 1

    @nn.compact
    def __call__(self, x):
        c = self.config
        kernel_shape = x.shape[x.ndim - self.in_dims:] + self.features
        kernel = self.param("kernel", _init(c, self.axes), kernel_shape, c.params_dtype)
        bias = self.param("bias", _zeros(self.axes[self.in_dims:]), self.features, c.params_dtype)
        x, kernel = x.astype(c.compute_dtype), kernel.astype(c.compute_dtype)
        contracting = (tuple(range(x.ndim - self.in_dims, x.ndim)), tuple(range(self.in_dims)))
        return add_parameter(jax.lax.dot_general(x, kernel, (contracting, ((), ()))), bias)


def add_parameter(x, param):
    """x + param (cast to x's dtype), broadcast over the leading axes of x; the gradient of
    `param` is summed over those axes in param's dtype (float32) even when x is bfloat16, where
    autodiff of the cast would sum batch x length bfloat16 values in bfloat16."""
    if x.dtype == param.dtype:
        return x + param
    return _add_low_precision(x, param)


@jax.custom_vjp
def _add_low_precision(x, param):
    return x + param.astype(x.dtype)


def _add_low_precision_forward(x, param):
    return _add_low_precision(x, param), param


def _add_low_precision_backward(param, g):
    leading = tuple(range(g.ndim - param.ndim))
    return g, jnp.sum(g, axis=leading, dtype=param.dtype)


_add_low_precision.defvjp(_add_low_precision_forward, _add_low_precision_backward)


@jax.custom_vjp
def add_bias(x, bias):
    """x + bias over the trailing axes of x. Same values and gradients as `+`; the bias gradient is
    computed as ones @ g, a matrix-vector product, because XLA:CPU's plain reduction over the
    leading axes is ~20x slower (95 ms vs 4 ms for the [640, 32000] MLM logits)."""
    return x + bias


def _add_bias_forward(x, bias):
    return x + bias, bias


def _add_bias_backward(bias, g):
    rows = g.reshape(-1, bias.size)
    return g, (jnp.ones(rows.shape[0], rows.dtype) @ rows).reshape(bias.shape).astype(bias.dtype)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)


def bias_add(x, bias):
    """x + bias: through `add_bias`'s hand-written gradient where `backend.hand_written_gradients`
    says it pays (CPU), plain autodiff elsewhere."""
    return add_bias(x, bias) if backend.hand_written_gradients(backend.current()) else x + bias


def _dense(config: BertConfig, features, axes, name, in_dims=1) -> Dense:
    features = features if isinstance(features, tuple) else (features,)
    return Dense(config, features, axes, in_dims, name=name)


def _constrain(x):
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def attention(query, key, value, mask, *, dropout_rate=0.0, dropout_rng=None, implementation="xla"):
    """Multi-head attention over [batch, length, heads, head_dim] inputs (that layout all the way,
    no transposes around the kernel) with a boolean key mask [batch, 1, 1, kv_length] (True = attend).

    implementation (see `backend.attention_implementation`):
    - 'xla': `jax.nn.dot_product_attention` with the mask; one fused softmax attention.
    - 'cudnn': the same function's cuDNN flash attention; the mask is passed as
      key_value_seq_lengths (real tokens per row), since cuDNN takes padding as lengths and a mask
      only as a full [.., q_length, kv_length] bias. This assumes padding at the end of each row,
      as our data and right-padding tokenizers produce.
    - 'explicit': scores, float32 softmax and dropout on the probabilities written out; the only
      path with attention-probability dropout (BERT's default), which no fused kernel offers.
    """
    if implementation == "explicit":
        scale = query.shape[-1] ** -0.5
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32) * scale
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(value.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, value)
    return jax.nn.dot_product_attention(query, key, value, implementation=implementation,
                                        **fused_attention_masking(mask, implementation))


def fused_attention_masking(mask, implementation: str) -> dict:
    """The masking keyword arguments of `jax.nn.dot_product_attention` for a key mask
    [batch, 1, 1, kv_length]: int32 key_value_seq_lengths [batch] for 'cudnn', the mask for 'xla'."""
    if implementation == "cudnn":
        return {"key_value_seq_lengths": jnp.sum(mask[:, 0, 0, :], axis=-1, dtype=jnp.int32)}
    return {"mask": mask}


class EmbeddingTable(nn.Module):
    """A [num_embeddings, features] table stored in the parameter dtype (param 'embedding', as
    nn.Embed names it). Every lookup reads rows from that float32 table and casts only the
    result to the compute dtype, so no backward pass scatters into a low-precision copy of the
    table (nn.Embed casts the whole table first: a bfloat16 scatter-add of the gradient)."""

    config: BertConfig
    num_embeddings: int
    axes: tuple[str, str]

    def setup(self):
        c = self.config
        self.embedding = self.param("embedding", _init(c, self.axes), (self.num_embeddings, c.hidden_size),
                                    c.params_dtype)

    def __call__(self, ids):
        """Rows `ids` [...] -> [..., features] in the compute dtype; `config.embedding_lookup`
        picks a gather (float32 scatter-add gradient) or a one-hot matmul (dense gradient)."""
        c = self.config
        if c.embedding_lookup == "one_hot":
            one_hot = jax.nn.one_hot(ids, self.num_embeddings, dtype=c.compute_dtype)
            return jnp.dot(one_hot, self.embedding.astype(c.compute_dtype),
                           preferred_element_type=jnp.float32).astype(c.compute_dtype)
        return jnp.take(self.embedding, ids, axis=0).astype(c.compute_dtype)

    def add_leading_rows(self, x):
        """x [batch, length, features] + the first `length` rows (positions 0..length-1): a
        slice, whose gradient is a float32 sum over the batch and a pad, not a scatter of
        batch x length rows into the table."""
        return add_parameter(x, self.embedding[:x.shape[1]])

    def select(self, ids):
        """Rows for a small table (segment ids): a select between the two rows when there are
        two, a float32 one-hot matmul otherwise; the gradient is a reduction, not a scatter."""
        if self.num_embeddings == 2:
            rows = jnp.where(ids[..., None] == 1, self.embedding[1], self.embedding[0])
        else:
            rows = jax.nn.one_hot(ids, self.num_embeddings, dtype=self.embedding.dtype) @ self.embedding
        return rows.astype(self.config.compute_dtype)

    def attend(self, hidden):
        """hidden [..., features] . table^T -> [..., num_embeddings] (the tied MLM decoder)."""
        c = self.config
        return jnp.dot(hidden.astype(c.compute_dtype), self.embedding.astype(c.compute_dtype).T)


class Embeddings(nn.Module):
    """Token + learned position + segment embeddings, LayerNorm and dropout."""

    config: BertConfig

    def setup(self):
        c = self.config
        self.word_embeddings = EmbeddingTable(c, c.vocab_size, ("vocab", "embed"))
        self.position_embeddings = EmbeddingTable(c, c.max_position_embeddings, ("position", "embed"))
        self.token_type_embeddings = EmbeddingTable(c, c.type_vocab_size, ("segment", "embed"))
        self.layer_norm = _layer_norm(c, "LayerNorm")
        self.dropout = nn.Dropout(c.hidden_dropout)

    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        x = self.position_embeddings.add_leading_rows(self.word_embeddings(input_ids))
        x = x + self.token_type_embeddings.select(token_type_ids)
        return _constrain(self.dropout(self.layer_norm(x), deterministic=deterministic))

    def attend(self, hidden):
        """Projects hidden states onto the vocabulary with the tied word embedding."""
        return self.word_embeddings.attend(hidden)


class EncoderLayer(nn.Module):
    """A transformer layer. Post-LN (the original BERT): x = LN(x + Attn(x)); x = LN(x + FFN(x)).
    Pre-LN (`config.pre_layer_norm`; Xiong et al. 2020, Cramming, MosaicBERT): x = x + Attn(LN(x));
    x = x + FFN(LN(x)), the residual stream never normalised inside the stack, which trains stably
    at larger learning rates; `Encoder` then normalises the last layer's output once."""

    config: BertConfig
    scanned: bool = False  # return (x, y), the carry signature that nn.scan expects
    collect: bool = False  # when scanned: y = x (every layer's output), else None

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        c = self.config
        attention_norm, output_norm = _layer_norm(c, "attention_norm"), _layer_norm(c, "output_norm")
        attn_out = self._attention(attention_norm(x) if c.pre_layer_norm else x, mask, deterministic)
        x = _constrain(x + attn_out if c.pre_layer_norm else attention_norm(x + attn_out))
        h = _dense(c, c.intermediate_size, ("embed", "mlp"), "intermediate")(output_norm(x) if c.pre_layer_norm else x)
        h = nn.with_logical_constraint(nn.gelu(h, approximate=False), ("batch", "length", "mlp"))
        h = _dense(c, c.hidden_size, ("mlp", "embed"), "output")(h)
        h = nn.Dropout(c.hidden_dropout)(h, deterministic=deterministic)
        x = _constrain(x + h if c.pre_layer_norm else output_norm(x + h))
        if self.scanned:  # the carry signature nn.scan expects; the output stacks every layer's x
            return x, (x if self.collect else None)
        return x

    def _attention(self, x, mask, deterministic: bool):
        """Self-attention of x [B, S, H] with its output projection and dropout -> [B, S, H]."""
        c = self.config
        head_dim = c.hidden_size // c.num_heads
        qkv_shape = (c.num_heads, head_dim)
        q, k, v = (_dense(c, qkv_shape, ("embed", "heads", "kv"), name)(x)
                   for name in ("query", "key", "value"))
        use_dropout = not deterministic and c.attention_dropout > 0.0
        implementation = backend.attention_implementation(
            c.attention_impl, backend.current(), jnp.dtype(c.compute_dtype).name, head_dim, use_dropout)
        context = attention(q, k, v, mask, dropout_rate=c.attention_dropout,
                            dropout_rng=self.make_rng("dropout") if use_dropout else None,
                            implementation=implementation)
        attn_out = _dense(c, c.hidden_size, ("heads", "kv", "embed"), "attention_output", in_dims=2)(context)
        return nn.Dropout(c.hidden_dropout)(attn_out, deterministic=deterministic)


class Encoder(nn.Module):
    """A stack of `num_layers` encoder layers, optionally scanned and rematerialised."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, output_hidden_states: bool = False):
        """x [B, S, H] -> the last layer's output [B, S, H] (layer-normalised when pre-LN), or with
        `output_hidden_states` a pair (that output, tuple of the `num_layers` layer outputs, each
        [B, S, H], as the layers return them)."""
        c = self.config
        layer_cls = nn.remat(EncoderLayer, static_argnums=(3,)) if c.remat else EncoderLayer
        if c.scan_layers:
            scanned = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                              in_axes=(nn.broadcast, nn.broadcast), length=c.num_layers,
                              metadata_params={nn.PARTITION_NAME: "layers"})
            x, stacked = scanned(c, scanned=True, collect=output_hidden_states, name="layers")(x, mask, deterministic)
            outputs = tuple(stacked) if output_hidden_states else ()
        else:
            outputs = []
            for i in range(c.num_layers):
                x = layer_cls(c, name=f"layer_{i}")(x, mask, deterministic)
                outputs.append(x)
        if c.pre_layer_norm:
            x = _constrain(_layer_norm(c, "final_norm")(x))
        return (x, tuple(outputs)) if output_hidden_states else x


def _one_mask(input_mask, attention_mask):
    """The padding mask given under either name (ours, or transformers' `attention_mask`)."""
    if input_mask is not None and attention_mask is not None:
        raise TypeError("pass the padding mask once: input_mask or attention_mask, not both")
    return attention_mask if input_mask is None else input_mask


class BertModel(nn.Module):
    """The BERT encoder.

    Call with `input_ids` int [B, S] and optionally the padding mask [B, S] (1 = real token, 0 =
    padding; positional, `input_mask=` or transformers' `attention_mask=`; all ones when omitted)
    and `token_type_ids` int [B, S] (segment 0/1; zeros when omitted), so `model.apply(variables,
    **tokenized)` works with the arrays a tokenizer returns. Returns (sequence_output [B, S, H],
    pooled_output [B, H]) in the compute dtype; with `output_hidden_states=True` a third element,
    a tuple of num_layers + 1 arrays [B, S, H]: the embedding output, then each layer's output (as
    transformers' `hidden_states`). Raises ValueError when S exceeds max_position_embeddings and
    TypeError when the mask is given twice.
    """

    config: BertConfig

    def setup(self):
        self.embeddings = Embeddings(self.config)
        self.encoder = Encoder(self.config)
        self.pooler = _dense(self.config, self.config.hidden_size, ("embed", "embed_out"), "pooler")

    def __call__(self, input_ids, input_mask=None, token_type_ids=None, deterministic: bool = True, *,
                 attention_mask=None, output_hidden_states: bool = False):
        self.config.check_sequence_length(input_ids.shape[1])
        input_mask = _one_mask(input_mask, attention_mask)
        if input_mask is None:
            input_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, deterministic)
        mask = input_mask.astype(bool)[:, None, None, :]
        encoded = self.encoder(x, mask, deterministic, output_hidden_states)
        sequence_output, layers = encoded if output_hidden_states else (encoded, ())
        pooled_output = jnp.tanh(self.pooler(sequence_output[:, 0]))
        if output_hidden_states:
            return sequence_output, pooled_output, (x,) + layers
        return sequence_output, pooled_output


def gather_positions(sequence, positions):
    """Picks rows `positions` [B, P] out of `sequence` [B, S, H] -> [B, P, H], in its dtype.

    A one-hot matmul (exact: one non-zero term per output; accumulated in float32) rather than a
    gather, whose gradient would scatter-add into a bfloat16 [B, S, H] buffer; it costs 2BPSH
    FLOPs, under 0.1% of a BERT step."""
    one_hot = jax.nn.one_hot(positions, sequence.shape[1], dtype=sequence.dtype)
    return jnp.einsum("bps,bsh->bph", one_hot, sequence, preferred_element_type=jnp.float32).astype(sequence.dtype)


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM head (tied decoder) and the next-sentence head.

    The MLM head runs only at `masked_lm_positions` [B, P] (all positions when None), so the
    vocabulary projection costs P/S of the dense version. Returns (mlm_logits [B, P, V] float32,
    nsp_logits [B, 2] float32).
    """

    config: BertConfig

    def setup(self):
        c = self.config
        self.bert = BertModel(c)
        self.mlm_transform = _dense(c, c.hidden_size, ("embed", "embed_out"), "mlm_transform")
        self.mlm_norm = _layer_norm(c, "mlm_norm")
        self.mlm_bias = self.param("mlm_bias", _zeros(("vocab",)), (c.vocab_size,), c.params_dtype)
        self.nsp = _dense(c, 2, ("embed", None), "nsp")

    def __call__(self, input_ids, input_mask=None, token_type_ids=None, masked_lm_positions=None,
                 deterministic: bool = True, *, attention_mask=None):
        """Arguments as `BertModel`'s (the mask also as `attention_mask=`) plus `masked_lm_positions`."""
        sequence_output, pooled_output = self.bert(input_ids, _one_mask(input_mask, attention_mask),
                                                   token_type_ids, deterministic)
        if masked_lm_positions is not None:
            sequence_output = gather_positions(sequence_output, masked_lm_positions)
        h = self.mlm_norm(nn.gelu(self.mlm_transform(sequence_output), approximate=False))
        mlm_logits = bias_add(self.bert.embeddings.attend(h).astype(jnp.float32), self.mlm_bias)
        nsp_logits = self.nsp(pooled_output).astype(jnp.float32)
        return mlm_logits, nsp_logits
