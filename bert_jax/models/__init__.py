"""The Flax modules (`bert`: embeddings, attention, encoder, MLM and NSP heads), the mapping to and from
Hugging Face weight names (`hf_weights`) and the FLOPs count for MFU (`flops`)."""

from bert_jax import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, __path__)
