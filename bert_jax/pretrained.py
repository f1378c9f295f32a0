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


def load_workdir(workdir: str) -> Pretrained:
    """The latest checkpoint of a `bert-jax pretrain` workdir, with its tokenizer."""
    from bert_jax.train import restore_workdir

    with tf.io.gfile.GFile(os.path.join(workdir, "data_metadata.json")) as f:
        metadata = json.load(f)
    run, state = restore_workdir(workdir, metadata)
    tok = tokenizer_lib.load(os.path.join(workdir, "tokenizer"))
    return Pretrained(run.model, jax.device_get(state.params), tok, int(state.step))


def load(directory: str) -> Pretrained:
    """A pretraining workdir (latest checkpoint + tokenizer)."""
    if tf.io.gfile.exists(os.path.join(directory, "checkpoints")):
        return load_workdir(directory)
    raise FileNotFoundError(f"{directory} is not a bert-jax workdir (no checkpoints/)")
