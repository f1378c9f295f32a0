"""bert_jax: pretrain BERT-style masked language models from scratch in JAX/Flax."""

from bert_jax.model import BertConfig, BertForPreTraining, BertModel

__all__ = ["BertConfig", "BertForPreTraining", "BertModel"]
