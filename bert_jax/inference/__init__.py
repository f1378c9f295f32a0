"""Using a trained model: params-only loading onto any devices (`pretrained`), `fill_mask`, Hugging
Face import (`hf`) and export (`hf_export`), and the notebook model object (`notebook`)."""

from bert_jax import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, __path__)
