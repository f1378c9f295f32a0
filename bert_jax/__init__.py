"""bert_jax: pretrain BERT-style masked language models from scratch in JAX/Flax.

`bert_jax.load(path)` gives a trained model for notebooks (`bert_jax.inference.notebook.Model`).
The sub-packages, in the order data flows through them:

- `bert_jax.data`: raw text -> tokenizer -> pretraining examples in TFRecord shards -> tf.data
  batches (imports no JAX);
- `bert_jax.models`: the Flax modules and the Hugging Face weight mapping;
- `bert_jax.training`: the one train loop, the task-independent step, optimizer, mesh sharding,
  checkpoints, evaluation without an optimizer;
- `bert_jax.tasks`: what is trained with it: `pretraining` (MLM + NSP/SOP) and `classification`;
- `bert_jax.inference`: params-only loading, fill-mask, Hugging Face export/import, the notebook model;
- `bert_jax.config`: experiment configs (defaults, presets, overrides, validation);
- `bert_jax.backend`: everything that differs per platform (CPU, GPU, TPU), in one module.

The public names and the submodules are imported on first use (PEP 562 `__getattr__`), so
`import bert_jax`, tab completion and the command line's start load neither JAX nor TensorFlow.
"""

import importlib as _importlib
import pkgutil as _pkgutil

_EXPORTS = {"load": "bert_jax.inference.notebook", "Model": "bert_jax.inference.notebook",
            "BertConfig": "bert_jax.models.bert", "BertModel": "bert_jax.models.bert",
            "BertForPreTraining": "bert_jax.models.bert", "Pretrained": "bert_jax.inference.pretrained",
            "Classifier": "bert_jax.tasks.classification"}

__all__ = sorted(_EXPORTS)


def lazy_submodules(package: str, path: list[str], exports: dict[str, str] | None = None):
    """PEP 562 `__getattr__` and `__dir__` for `package`: its submodules (and `exports`, name ->
    module) are imported on first attribute access, so tab completion lists them without importing
    them. AttributeError for any other name."""
    exports = exports or {}
    submodules = sorted(m.name for m in _pkgutil.iter_modules(path))

    def __getattr__(name):
        if name in exports:
            return getattr(_importlib.import_module(exports[name]), name)
        if name in submodules:
            return _importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted({"__doc__", "__name__", "__path__"} | set(exports) | set(submodules))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_submodules(__name__, __path__, _EXPORTS)
