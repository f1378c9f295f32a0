"""Config files and --config.a.b=value overrides."""

import os

import pytest

from bert_jax.config.loading import load_config
from bert_jax.models.bert import BertConfig

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "bert_jax", "config", "presets")


@pytest.mark.parametrize("name, layers, hidden", [("tiny", 2, 128), ("mini", 4, 256), ("small", 4, 512),
                                                  ("medium", 8, 512), ("base", 12, 768), ("large", 24, 1024),
                                                  ("demo", 2, 128)])
def test_family_configs(name, layers, hidden):
    config = load_config(os.path.join(CONFIGS, f"{name}.py"))
    model = BertConfig.from_dict(dict(config.model) | {"vocab_size": 32000})
    assert (model.num_layers, model.hidden_size) == (layers, hidden)
    assert model.num_heads == hidden // 64 and model.intermediate_size == 4 * hidden


def test_overrides_keep_types_and_reject_bad_values():
    config = load_config(os.path.join(CONFIGS, "base.py"), [
        "--config.train.num_steps=50", "--config.optim.learning_rate=3e-4", "--config.model.remat=true",
        "--config.model.dtype=bfloat16", "--config.optim.end_lr_factor=0"])
    assert config.train.num_steps == 50 and config.optim.learning_rate == 3e-4
    assert config.model.remat is True and config.model.dtype == "bfloat16"
    assert isinstance(config.optim.end_lr_factor, float)
    for bad, message in [("--config.train.num_steps=many", "expected an integer"),
                         ("--config.model.remat=maybe", "expected true or false"),
                         ("--config.nope.x=1", "no config section 'nope'"),
                         ("--train.num_steps=1", "config overrides look like")]:
        with pytest.raises(ValueError, match=message):
            load_config(os.path.join(CONFIGS, "base.py"), [bad])
