"""Maps Hugging Face `BertForPreTraining` state dicts (PyTorch names) to our parameter tree and back.

Arrays are numpy; PyTorch `Linear` weights are [out, in], our kernels [in, out] (attention
kernels split into [embed, heads, head_dim]). Scanned models stack the layers on axis 0.
"""

from __future__ import annotations

from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bert_jax.models.bert import BertConfig, BertForPreTraining

# Shape transforms between a PyTorch tensor and our parameter, by kind.
#   plain: identical; dense: transposed; qkv_*/out_kernel: transposed and split into heads.


def _to_ours(kind: str, value: np.ndarray, config: BertConfig) -> np.ndarray:
    heads, head_dim = config.num_heads, config.hidden_size // config.num_heads
    if kind == "plain":
        return value
    if kind == "dense":
        return value.T
    if kind == "qkv_kernel":
        return value.T.reshape(value.shape[1], heads, head_dim)
    if kind == "qkv_bias":
        return value.reshape(heads, head_dim)
    if kind == "out_kernel":
        return value.T.reshape(heads, head_dim, value.shape[0])
    raise AssertionError(kind)


def _to_hf(kind: str, value: np.ndarray) -> np.ndarray:
    if kind == "plain":
        return value
    if kind == "dense":
        return value.T
    if kind == "qkv_kernel":
        return value.reshape(value.shape[0], -1).T
    if kind == "qkv_bias":
        return value.reshape(-1)
    if kind == "out_kernel":
        return value.reshape(-1, value.shape[-1]).T
    raise AssertionError(kind)


def _dense(ours: tuple[str, ...], hf: str, kernel_kind="dense", bias_kind="plain"):
    yield ours + ("kernel",), hf + ".weight", kernel_kind
    yield ours + ("bias",), hf + ".bias", bias_kind


def _norm(ours: tuple[str, ...], hf: str):
    yield ours + ("scale",), hf + ".weight", "plain"
    yield ours + ("bias",), hf + ".bias", "plain"


def _layer_entries(i: int) -> Iterator[tuple[tuple[str, ...], str, str]]:
    hf = f"bert.encoder.layer.{i}."
    for name in ("query", "key", "value"):
        yield from _dense((name,), hf + f"attention.self.{name}", "qkv_kernel", "qkv_bias")
    yield from _dense(("attention_output",), hf + "attention.output.dense", "out_kernel")
    yield from _norm(("attention_norm",), hf + "attention.output.LayerNorm")
    yield from _dense(("intermediate",), hf + "intermediate.dense")
    yield from _dense(("output",), hf + "output.dense")
    yield from _norm(("output_norm",), hf + "output.LayerNorm")


def _head_entries() -> Iterator[tuple[tuple[str, ...], str, str]]:
    emb = ("bert", "embeddings")
    yield emb + ("word_embeddings", "embedding"), "bert.embeddings.word_embeddings.weight", "plain"
    yield emb + ("position_embeddings", "embedding"), "bert.embeddings.position_embeddings.weight", "plain"
    yield emb + ("token_type_embeddings", "embedding"), "bert.embeddings.token_type_embeddings.weight", "plain"
    yield from _norm(emb + ("LayerNorm",), "bert.embeddings.LayerNorm")
    yield from _dense(("bert", "pooler"), "bert.pooler.dense")
    yield from _dense(("mlm_transform",), "cls.predictions.transform.dense")
    yield from _norm(("mlm_norm",), "cls.predictions.transform.LayerNorm")
    yield ("mlm_bias",), "cls.predictions.bias", "plain"
    yield from _dense(("nsp",), "cls.seq_relationship")


# Tied copies that PyTorch's state dict lists under a second name.
TIED_HF_NAMES = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def params_from_hf(state_dict: dict[str, np.ndarray], config: BertConfig) -> dict:
    """Builds our `BertForPreTraining` params from a HF `BertForPreTraining` state dict.

    Raises KeyError naming the first missing tensor and ValueError on a shape mismatch.
    """

    def fetch(name: str, kind: str) -> np.ndarray:
        if name not in state_dict:
            raise KeyError(f"Hugging Face state dict has no tensor '{name}'")
        return _to_ours(kind, np.asarray(state_dict[name]), config)

    params: dict = {}
    for path, name, kind in _head_entries():
        _set(params, path, fetch(name, kind))
    layers = []
    for i in range(config.num_layers):
        layer: dict = {}
        for path, name, kind in _layer_entries(i):
            _set(layer, path, fetch(name, kind))
        layers.append(layer)
    encoder = params["bert"].setdefault("encoder", {})
    if config.scan_layers:
        encoder["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    else:
        for i, layer in enumerate(layers):
            encoder[f"layer_{i}"] = layer
    _check_shapes(params, config)
    return params


def _entries_with_values(params: dict, config: BertConfig):
    """(HF name, kind, our array) for every tensor of `params`, layers unstacked when scanned."""
    for path, name, kind in _head_entries():
        yield name, kind, _get(params, path)
    encoder = params["bert"]["encoder"]
    for i in range(config.num_layers):
        layer = jax.tree.map(lambda x: x[i], encoder["layers"]) if config.scan_layers else encoder[f"layer_{i}"]
        for path, name, kind in _layer_entries(i):
            yield name, kind, _get(layer, path)


def params_to_hf(params: dict, config: BertConfig) -> dict[str, np.ndarray]:
    """Inverse of `params_from_hf`: our params -> HF `BertForPreTraining` state dict (numpy)."""
    state = {name: np.asarray(_to_hf(kind, np.asarray(value)))
             for name, kind, value in _entries_with_values(params, config)}
    for tied, source in TIED_HF_NAMES.items():
        state[tied] = state[source]
    return state


def hf_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every HF state-dict tensor (tied copies left out) that `config` implies,
    computed abstractly (no parameters are initialised)."""
    abstract = abstract_params(config)
    shapes = jax.eval_shape(lambda p: {name: _to_hf(kind, value)
                                       for name, kind, value in _entries_with_values(p, config)}, abstract)
    return {name: tuple(s.shape) for name, s in shapes.items()}


def abstract_params(config: BertConfig) -> dict:
    """ShapeDtypeStructs of our `BertForPreTraining` parameters for `config`."""
    ids = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(lambda: BertForPreTraining(config).init(jax.random.key(0), ids))
    return nn.meta.unbox(abstract["params"])


def _check_shapes(params: dict, config: BertConfig) -> None:
    """Compares every converted array with the shapes our model initialises."""
    expected = abstract_params(config)
    flat_actual = traverse_util.flatten_dict(params)
    for path, shape_struct in traverse_util.flatten_dict(expected).items():
        actual = flat_actual.get(path)
        if actual is None:
            raise KeyError(f"converted parameters lack {'/'.join(path)}")
        if tuple(actual.shape) != tuple(shape_struct.shape):
            raise ValueError(f"parameter {'/'.join(path)} has shape {tuple(actual.shape)} after "
                             f"conversion, the model config expects {tuple(shape_struct.shape)}")

