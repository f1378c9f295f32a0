"""Loads experiment configs (ml_collections `get_config()`), packaged by name (`base`) or from a
Python file, and applies `--config.a.b=value`."""

from __future__ import annotations

import ast
import importlib
import importlib.resources
import importlib.util
import json
import os

import ml_collections


def packaged_configs() -> list[str]:
    """Names of the configs shipped in `bert_jax/config/presets` (e.g. 'base', 'demo')."""
    files = importlib.resources.files("bert_jax.config.presets").iterdir()
    return sorted(f.name[:-3] for f in files if f.name.endswith(".py") and not f.name.startswith("_"))


def load_config(path: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Runs `get_config()` of a packaged config (`path` is a name such as 'base') or of the Python
    file at `path`, then applies command-line overrides. FileNotFoundError when it is neither."""
    if os.path.isfile(path):
        spec = importlib.util.spec_from_file_location(f"bert_jax_config_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    elif path in packaged_configs():
        module = importlib.import_module(f"bert_jax.config.presets.{path}")
    else:
        raise FileNotFoundError(f"--config {path}: neither a file nor a packaged config "
                                f"({', '.join(packaged_configs())})")
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config {path}: defines no get_config()")
    config = module.get_config()
    apply_overrides(config, overrides)
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """Applies `--config.section.field=value` strings, keeping each field's type."""
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(f"unrecognized argument {item!r}; config overrides look like "
                             f"--config.train.batch_size=256")
        dotted, raw = item[len("--config."):].split("=", 1)
        *parents, field = dotted.split(".")
        node = config
        for name in parents:
            if name not in node:
                raise ValueError(f"--config.{dotted}: no config section '{name}'")
            node = node[name]
        if field not in node:
            raise ValueError(f"--config.{dotted}: unknown field; {'.'.join(parents) or 'config'} has "
                             f"{sorted(node.keys())}")
        node[field] = _parse(raw, node[field], dotted)


def _parse(raw: str, current, dotted: str):
    if isinstance(current, bool):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--config.{dotted}={raw}: expected true or false")
        return raw.lower() in ("true", "1")
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ValueError(f"--config.{dotted}={raw}: expected a {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if current is not None and not isinstance(value, type(current)):
        raise ValueError(f"--config.{dotted}={raw}: expected a {type(current).__name__}")
    return value


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config that `pretrain` wrote into `workdir/config.json`."""
    import tensorflow as tf

    path = os.path.join(workdir, "config.json")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--workdir {workdir}: no config.json; not a pretraining workdir")
    with tf.io.gfile.GFile(path) as f:
        values = json.load(f)
    values.pop("data_dir", None)
    return ml_collections.ConfigDict(values)
