"""BERT-Base (L12/H768/A12), from the original BERT release's model family."""

from bert_jax.config.defaults import bert_config


def get_config():
    return bert_config(num_layers=12, hidden_size=768)
