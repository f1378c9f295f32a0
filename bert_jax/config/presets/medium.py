"""BERT-Medium (L8/H512/A8), from the original BERT release's model family."""

from bert_jax.config.defaults import bert_config


def get_config():
    return bert_config(num_layers=8, hidden_size=512)
