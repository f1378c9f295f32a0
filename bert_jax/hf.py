"""Hugging Face interop: export a workdir as a `transformers` BERT directory, import one back.

Export writes `config.json`, `model.safetensors` (BertForPreTraining weights), the tokenizer
(`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`, plus our own files so
bert-jax loads the directory too) and a README.md model card. Import reads a local BERT directory
(BertForPreTraining, BertForMaskedLM or BertModel; safetensors, or a PyTorch .bin loaded with
`weights_only=True`) into a workdir that `pretrain` continues from.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import fs, hf_weights
from bert_jax import tokenizer as tokenizer_lib
from bert_jax.model import BertConfig, BertForPreTraining
from bert_jax.pretrained import Pretrained, load_params, save_params

IMPORTED_PARAMS = "imported_params.safetensors"  # our parameter tree, flattened with '/'
IMPORTED_MODEL = "imported_model.json"  # the BertConfig of the imported model


def hf_config(config: BertConfig, pad_token_id: int) -> dict:
    """`config.json` of transformers' BertConfig for our model config."""
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
    """Our BertConfig from a transformers `config.json` (clear error when it is not a BERT)."""
    if values.get("model_type", "bert") != "bert":
        raise ValueError(f"{path}: model_type {values.get('model_type')!r}, expected 'bert'")
    if values.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{path}: hidden_act {values['hidden_act']!r}; only exact 'gelu' is supported")
    return BertConfig(
        vocab_size=values["vocab_size"], hidden_size=values["hidden_size"],
        num_layers=values["num_hidden_layers"], num_heads=values["num_attention_heads"],
        intermediate_size=values["intermediate_size"],
        max_position_embeddings=values.get("max_position_embeddings", 512),
        type_vocab_size=values.get("type_vocab_size", 2),
        hidden_dropout=values.get("hidden_dropout_prob", 0.1),
        attention_dropout=values.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=values.get("layer_norm_eps", 1e-12),
        initializer_range=values.get("initializer_range", 0.02))


def export_hf(model: Pretrained, output: str, card: str = "") -> None:
    """Writes `model` as a transformers BERT directory into `output` (must not hold a model)."""
    from safetensors.numpy import save_file

    output = fs.absolute(output)
    if os.path.exists(os.path.join(output, "config.json")):
        raise FileExistsError(f"--output {output} already holds a model; choose another directory")
    os.makedirs(output, exist_ok=True)
    config = model.config
    state = hf_weights.params_to_hf(model.params, config)
    for tied in hf_weights.TIED_HF_NAMES:  # transformers re-ties these on load
        state.pop(tied)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()},
              os.path.join(output, "model.safetensors"), metadata={"format": "pt"})
    tok = model.tokenizer
    with open(os.path.join(output, "config.json"), "w") as f:
        json.dump(hf_config(config, tok.pad_id), f, indent=2)
    _write_tokenizer(tok, output, config.max_position_embeddings)
    with open(os.path.join(output, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)


def _write_tokenizer(tok: tokenizer_lib.Tokenizer, output: str, max_length: int) -> None:
    tokenizer_lib.copy_files(tok.directory, output)
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}
    with open(os.path.join(output, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    with open(os.path.join(output, "tokenizer_config.json"), "w") as f:
        json.dump(special | {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                             "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
                             "clean_up_tokenization_spaces": False}, f, indent=2)


def model_card(model: Pretrained, metrics: dict, data: dict) -> str:
    """A README.md for the Hub: what was trained, on what, how far, and how it scored."""
    c = model.config
    lines = [
        "---", "library_name: transformers", "pipeline_tag: fill-mask", "tags: [bert, bert-jax]", "---", "",
        f"# BERT (L{c.num_layers}/H{c.hidden_size}/A{c.num_heads}) pretrained with bert_jax", "",
        f"- steps: {model.step}",
        f"- tokenizer: {model.tokenizer.model_type}, {model.tokenizer.vocab_size} tokens",
        f"- data: {data.get('summary', {}).get('documents', '?')} documents, "
        f"{data.get('splits', {}).get('train', {}).get('examples', '?')} training examples, "
        f"sequence length {data.get('max_seq_length', '?')}, {data.get('pair_task', '?')} pairs",
        "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())]
    lines += ["", "```python", "from transformers import pipeline",
              "fill = pipeline('fill-mask', model='PATH_OR_HUB_ID')", "fill('모든 국민은 [MASK] 앞에 평등하다.')",
              "```", ""]
    return "\n".join(lines)


def load_hf_dir(directory: str) -> Pretrained:
    """A transformers BERT directory (ours or any BERT with a tokenizer.json) for inference."""
    tok = _tokenizer_for(directory)
    config, params, _ = read_hf_weights(directory)
    return Pretrained(config, params, tok, step=0)


def _tokenizer_for(directory: str) -> tokenizer_lib.Tokenizer:
    """The directory's tokenizer, checked against config.json's vocabulary size."""
    if not os.path.exists(os.path.join(directory, "tokenizer.json")):
        raise FileNotFoundError(f"{directory}: no tokenizer.json; bert-jax needs the fast tokenizer file")
    tok = tokenizer_lib.load(directory)
    config = _read_config(directory)
    if tok.vocab_size != config.vocab_size:
        raise ValueError(f"{directory}: the tokenizer has {tok.vocab_size} tokens but config.json says "
                         f"vocab_size={config.vocab_size}")
    return tok


def _read_state_dict(directory: str) -> dict[str, np.ndarray]:
    safetensors_path = os.path.join(directory, "model.safetensors")
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(safetensors_path):
        from safetensors.numpy import load_file

        return load_file(safetensors_path)
    if os.path.exists(bin_path):
        try:
            import torch
        except ImportError:
            raise ValueError(f"{bin_path} needs PyTorch to read; convert it to safetensors") from None
        state = torch.load(bin_path, map_location="cpu", weights_only=True)  # never unpickle freely
        return {k: v.float().numpy() for k, v in state.items()}
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _normalise_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BertModel names (no 'bert.' prefix) and old gamma/beta LayerNorm names -> ours."""
    out = {}
    for name, value in state.items():
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = "bert." + name
        out[name] = value
    return out


def _read_config(directory: str) -> BertConfig:
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} is neither a bert-jax workdir nor a Hugging Face model "
                                f"(no config.json)")
    with open(path) as f:
        return config_from_hf(json.load(f), path)


def read_hf_weights(directory: str) -> tuple[BertConfig, dict, list[str]]:
    """(config, our params, names of parts initialised because the checkpoint lacks them)."""
    config = _read_config(directory)
    state = _normalise_names(_read_state_dict(directory))
    fresh = hf_weights.params_to_hf(_initial_params(config), config)
    missing = sorted(name for name in fresh if name not in state and name not in hf_weights.TIED_HF_NAMES)
    unknown_prefixes = {n.split(".")[0] for n in state} - {"bert", "cls"}
    if unknown_prefixes:
        raise ValueError(f"{directory}: unexpected weights {sorted(unknown_prefixes)}; expected a "
                         f"BertForPreTraining, BertForMaskedLM or BertModel checkpoint")
    merged = {name: state.get(name, value) for name, value in fresh.items()}
    return config, hf_weights.params_from_hf(merged, config), _parts(missing)


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
    directory, output = fs.absolute(directory), fs.absolute(output)
    if os.path.exists(os.path.join(output, "checkpoints")) or os.path.exists(os.path.join(output, IMPORTED_MODEL)):
        raise FileExistsError(f"--output {output} already holds a workdir; choose another directory")
    tok = _tokenizer_for(directory)
    config, params, missing = read_hf_weights(directory)
    os.makedirs(output, exist_ok=True)
    tokenizer_lib.copy_files(tok.directory, os.path.join(output, "tokenizer"))
    save_params(params, os.path.join(output, IMPORTED_PARAMS))
    with open(os.path.join(output, IMPORTED_MODEL), "w") as f:
        json.dump(dataclasses.asdict(config) | {"source": os.path.abspath(directory), "initialised": missing}, f,
                  indent=2)
    return missing


def load_imported(workdir: str) -> tuple[BertConfig, dict] | None:
    """The model config and parameters `import-hf` left in `workdir`, or None."""
    path = os.path.join(workdir, IMPORTED_MODEL)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        values = json.load(f)
    fields = {f.name for f in dataclasses.fields(BertConfig)}
    config = BertConfig(**{k: v for k, v in values.items() if k in fields})
    return config, load_params(os.path.join(workdir, IMPORTED_PARAMS))
