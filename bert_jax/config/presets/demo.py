"""Demo: a small BERT (L2/H128/A2) that learns visibly on 2 CPU cores in a few minutes."""

from bert_jax.config.defaults import demo_config


def get_config():
    return demo_config()
