"""Hugging Face BERT directories: read one (config, weights, tokenizer) and import it as a workdir.

Reads a local BERT directory (BertForPreTraining, BertForMaskedLM or BertModel; safetensors, or a
PyTorch .bin loaded with `weights_only=True`). `import-hf` keeps its weights under their Hugging
Face names in the new workdir; `pretrain` and `bert_jax.inference.pretrained` convert them once into the
layout of the model they build. A damaged directory is a one-line ValueError naming the file.
Writing a directory is `bert_jax.inference.hf_export`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import fs
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.models import hf_weights
from bert_jax.models.bert import BertConfig, BertForPreTraining

IMPORTED_WEIGHTS = "imported_model.safetensors"  # the Hugging Face state dict, missing heads initialised
IMPORTED_MODEL = "imported_model.json"  # the BertConfig of the imported model
CONFIG_KEYS = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
               "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size"}


def hf_config(config: BertConfig, pad_token_id: int) -> dict:
    """`config.json` of transformers' BertConfig for our model config; ValueError naming the field
    for a pre-LayerNorm model, which transformers' post-LN-only BertModel cannot represent."""
    if config.pre_layer_norm:
        raise ValueError("model.pre_layer_norm=True: transformers' BERT is post-LayerNorm only, so a pre-LN "
                         "model has no exact Hugging Face BERT export; pretrain with model.pre_layer_norm=False "
                         "to export")
    return {
        "architectures": ["BertForPreTraining"], "model_type": "bert", "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu", "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_position_embeddings, "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range, "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": pad_token_id, "position_embedding_type": "absolute", "tie_word_embeddings": True,
    }


def config_from_hf(values: dict, path: str) -> BertConfig:
    """Our BertConfig from a transformers `config.json` (ValueError naming `path` when it is not a
    BERT, lacks a size or holds an invalid one)."""
    if values.get("model_type", "bert") != "bert":
        raise ValueError(f"{path}: model_type {values.get('model_type')!r}, expected 'bert'")
    if values.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{path}: hidden_act {values['hidden_act']!r}; only exact 'gelu' is supported")
    absent = [key for key in CONFIG_KEYS.values() if key not in values]
    if absent:
        raise ValueError(f"{path}: no {', '.join(absent)}; not a complete BERT config")
    try:
        return BertConfig(
            **{ours: values[theirs] for ours, theirs in CONFIG_KEYS.items()},
            max_position_embeddings=values.get("max_position_embeddings", 512),
            type_vocab_size=values.get("type_vocab_size", 2),
            hidden_dropout=values.get("hidden_dropout_prob", 0.1),
            attention_dropout=values.get("attention_probs_dropout_prob", 0.1),
            layer_norm_eps=values.get("layer_norm_eps", 1e-12),
            initializer_range=values.get("initializer_range", 0.02))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def read_json(path: str) -> dict:
    """The JSON object in `path`; FileNotFoundError or a one-line ValueError naming the file."""
    if not fs.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        values = json.loads(fs.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(values).__name__}")
    return values


def tokenizer_for(directory: str) -> tokenizer_lib.Tokenizer:
    """The directory's tokenizer, checked against config.json's vocabulary size."""
    if not os.path.exists(os.path.join(directory, "tokenizer.json")):
        raise FileNotFoundError(f"{directory}: no tokenizer.json; bert-jax needs the fast tokenizer file")
    tok = tokenizer_lib.load(directory)
    config = read_config(directory)
    if tok.vocab_size != config.vocab_size:
        raise ValueError(f"{directory}: the tokenizer has {tok.vocab_size} tokens but config.json says "
                         f"vocab_size={config.vocab_size}")
    return tok


def _read_state_dict(directory: str) -> tuple[dict[str, np.ndarray], str]:
    """(tensors by name, the file they came from)."""
    safetensors_path = os.path.join(directory, "model.safetensors")
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(safetensors_path):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(safetensors_path), safetensors_path
        except SafetensorError as error:
            raise ValueError(f"{safetensors_path}: damaged safetensors file ({error})") from None
    if os.path.exists(bin_path):
        return _read_pytorch_bin(bin_path), bin_path
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _read_pytorch_bin(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict read with `weights_only=True`: a pickle that would run code is refused."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path} needs PyTorch to read; convert it to safetensors") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle freely
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: refused or unreadable ({str(error).splitlines()[0]})") from None
    return {k: v.float().numpy() for k, v in state.items()}


def _normalise_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BertModel names (no 'bert.' prefix) and old gamma/beta LayerNorm names -> ours."""
    out = {}
    for name, value in state.items():
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = "bert." + name
        out[name] = value
    return out


def read_config(directory: str) -> BertConfig:
    """Our BertConfig from `directory/config.json`."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} is neither a bert-jax workdir nor a Hugging Face model "
                                f"(no config.json)")
    return config_from_hf(read_json(path), path)


def read_hf_weights(directory: str) -> tuple[BertConfig, dict[str, np.ndarray], list[str]]:
    """(config, the HF state dict with every BertForPreTraining tensor, names of the parts that
    were initialised because the checkpoint lacks them). Raises a ValueError naming the weights
    file when a tensor's shape disagrees with config.json."""
    config = read_config(directory)
    state, path = _read_state_dict(directory)
    state = _normalise_names(state)
    unknown_prefixes = {n.split(".")[0] for n in state} - {"bert", "cls"}
    if unknown_prefixes:
        raise ValueError(f"{path}: unexpected weights {sorted(unknown_prefixes)}; expected a "
                         f"BertForPreTraining, BertForMaskedLM or BertModel checkpoint")
    expected = hf_weights.hf_shapes(config)
    for name, shape in expected.items():
        if name in state and tuple(state[name].shape) != shape:
            raise ValueError(f"{path}: {name} has shape {tuple(state[name].shape)} but "
                             f"{os.path.join(directory, 'config.json')} implies {shape}")
    missing = sorted(name for name in expected if name not in state)
    if missing:
        fresh = hf_weights.params_to_hf(_initial_params(config), config)
        state = state | {name: fresh[name] for name in missing}
    return config, {name: state[name] for name in expected}, _parts(missing)


def _parts(missing: list[str]) -> list[str]:
    """Names the missing heads by module (e.g. 'cls.seq_relationship', 'bert.pooler.dense')."""
    return sorted({name.rsplit(".", 1)[0] for name in missing})


def _initial_params(config: BertConfig) -> dict:
    ids = jnp.zeros((1, 1), jnp.int32)
    variables = jax.jit(lambda: BertForPreTraining(config).init(jax.random.PRNGKey(0), ids))()
    return jax.device_get(nn.meta.unbox(variables["params"]))


def import_hf(directory: str, output: str) -> list[str]:
    """Turns a local HF BERT directory into a workdir that `pretrain` continues from; returns the
    parts that were missing and freshly initialised."""
    from safetensors.numpy import save_file

    directory, output = fs.absolute(directory), fs.absolute(output)
    if os.path.exists(os.path.join(output, "checkpoints")) or os.path.exists(os.path.join(output, IMPORTED_MODEL)):
        raise FileExistsError(f"--output {output} already holds a workdir; choose another directory")
    tok = tokenizer_for(directory)
    config, state, missing = read_hf_weights(directory)
    tokenizer_lib.copy_files(tok.directory, os.path.join(output, "tokenizer"))  # checks its links first
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()},
              os.path.join(output, IMPORTED_WEIGHTS))
    with open(os.path.join(output, IMPORTED_MODEL), "w") as f:  # last: marks a complete import
        json.dump(dataclasses.asdict(config) | {"source": os.path.abspath(directory), "initialised": missing}, f,
                  indent=2)
    return missing


def load_imported(workdir: str) -> tuple[BertConfig, dict[str, np.ndarray]] | None:
    """The model config and the Hugging Face state dict that `import-hf` left in `workdir`, or
    None; `hf_weights.params_from_hf(state, config)` puts them into any layout of that model."""
    from safetensors.numpy import load_file

    path = os.path.join(workdir, IMPORTED_MODEL)
    if not os.path.exists(path):
        return None
    values = read_json(path)
    fields = {f.name for f in dataclasses.fields(BertConfig)}
    config = BertConfig(**{k: v for k, v in values.items() if k in fields})
    return config, load_file(os.path.join(workdir, IMPORTED_WEIGHTS))
