"""Packaged experiment configs: `--config NAME` runs `get_config()` of `bert_jax/config/presets/NAME.py`
(tiny, mini, small, medium, base, large: the original BERT family; demo: the demo's model;
tiny_budget: BERT-Tiny with the small-budget recipe of README, Time to accuracy)."""
