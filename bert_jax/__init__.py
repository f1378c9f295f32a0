"""bert_jax: pretrain BERT-style masked language models from scratch in JAX/Flax.

`bert_jax.load(path)` gives a trained model for notebooks (`bert_jax.notebook.Model`). The public
names and the submodules are imported on first use (PEP 562 `__getattr__`), so `import bert_jax`,
tab completion and the command line's start load neither JAX nor TensorFlow.
"""

import importlib as _importlib
import pkgutil as _pkgutil

_EXPORTS = {"load": "bert_jax.notebook", "Model": "bert_jax.notebook",
            "BertConfig": "bert_jax.model", "BertModel": "bert_jax.model",
            "BertForPreTraining": "bert_jax.model", "Pretrained": "bert_jax.pretrained",
            "Classifier": "bert_jax.finetune"}  # fill_mask, finetune, ...: submodules of that name

__all__ = sorted(_EXPORTS)
_SUBMODULES = sorted(m.name for m in _pkgutil.iter_modules(__path__))


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'bert_jax' has no attribute {name!r}")


def __dir__():
    return sorted({n for n in globals() if n.startswith("__")} | set(__all__) | set(_SUBMODULES))
