"""bert_jax: pretrain BERT-style masked language models from scratch in JAX/Flax.

The model classes are imported on first use, so that the command line and the data-preparation
workers start without loading JAX.
"""

import importlib

_EXPORTS = {"BertConfig": "bert_jax.model", "BertModel": "bert_jax.model",
            "BertForPreTraining": "bert_jax.model"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bert_jax' has no attribute {name!r}")
