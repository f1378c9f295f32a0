"""Experiment configs: the defaults (`defaults`), packaged presets (`presets`: `--config base`),
loading with `--config.a.b=value` overrides parsed by ml_collections' config_flags (`loading`), the
command-line flags that are short names for fields (`flag_fields`) and range checks of every field
(`validation`)."""

from bert_jax import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, __path__)
