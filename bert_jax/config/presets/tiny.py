"""BERT-Tiny (L2/H128/A2), from the original BERT release's model family."""

from bert_jax.config.defaults import bert_config


def get_config():
    return bert_config(num_layers=2, hidden_size=128)
