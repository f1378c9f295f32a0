"""BERT-Mini (L4/H256/A4), from the original BERT release's model family."""

from bert_jax.config.defaults import bert_config


def get_config():
    return bert_config(num_layers=4, hidden_size=256)
