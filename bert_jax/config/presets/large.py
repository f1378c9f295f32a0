"""BERT-Large (L24/H1024/A16), from the original BERT release's model family."""

from bert_jax.config.defaults import bert_config


def get_config():
    return bert_config(num_layers=24, hidden_size=1024)
