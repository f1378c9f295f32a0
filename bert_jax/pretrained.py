"""Loads a trained model for inference: config, parameters and tokenizer of a pretraining workdir."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import tensorflow as tf

from bert_jax import tokenizer as tokenizer_lib
from bert_jax.model import BertConfig


@dataclasses.dataclass
class Pretrained:
    """A model ready for inference."""

    config: BertConfig
    params: dict
    tokenizer: tokenizer_lib.Tokenizer
    step: int


def save_params(params: dict, path: str) -> None:
    """Writes a parameter tree as float32 safetensors named 'a/b/c', under a temporary name that is
    renamed when complete (so an interrupted save never leaves a broken file)."""
    import numpy as np
    from flax import traverse_util
    from safetensors.numpy import save

    flat = {"/".join(k): np.ascontiguousarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
    with tf.io.gfile.GFile(path + ".tmp", "wb") as f:
        f.write(save(flat))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def load_params(path: str) -> dict:
    """The parameter tree `save_params` wrote."""
    from flax import traverse_util
    from safetensors.numpy import load

    with tf.io.gfile.GFile(path, "rb") as f:
        flat = load(f.read())
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def load_workdir(workdir: str) -> Pretrained:
    """The latest checkpoint of a `bert-jax pretrain` workdir, with its tokenizer."""
    from bert_jax.train import restore_workdir

    with tf.io.gfile.GFile(os.path.join(workdir, "data_metadata.json")) as f:
        metadata = json.load(f)
    run, state = restore_workdir(workdir, metadata)
    tok = tokenizer_lib.load(os.path.join(workdir, "tokenizer"))
    return Pretrained(run.model, jax.device_get(state.params), tok, int(state.step))


def load(directory: str) -> Pretrained:
    """A pretraining workdir (latest checkpoint + tokenizer), a workdir made by `import-hf` that
    has not trained yet, or a Hugging Face BERT directory (a relative path is taken from the
    current directory)."""
    from bert_jax import fs, hf

    directory = fs.absolute(directory)
    if tf.io.gfile.exists(os.path.join(directory, "checkpoints")):
        return load_workdir(directory)
    imported = hf.load_imported(directory)
    if imported is not None:
        return Pretrained(imported[0], imported[1], tokenizer_lib.load(os.path.join(directory, "tokenizer")), 0)
    if tf.io.gfile.exists(os.path.join(directory, "config.json")):
        return hf.load_hf_dir(directory)
    raise FileNotFoundError(f"{directory} is neither a bert-jax workdir (no checkpoints/) nor a "
                            f"Hugging Face model (no config.json)")
