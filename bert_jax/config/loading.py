"""Loads experiment configs (ml_collections `get_config()`), packaged by name (`base`) or from a
Python file, and applies command-line overrides `--config.a.b=value` or `--config.a.b value`.

The overrides are parsed by ml_collections' own `config_flags` (absl flags typed by each field:
an int field takes only integers, a float field any number, a bool field true/false/1/0, a tuple
field a Python literal); this module only rewords their errors into one line naming the field.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import json
import os
import re
from collections.abc import Sequence

import ml_collections

EXAMPLE = "--config.train.num_steps=1000"
# What an override of each field type must look like, for the errors.
EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            tuple: "a tuple literal such as \"(('batch', ('data', 'fsdp')),)\""}


def packaged_configs() -> list[str]:
    """Names of the configs shipped in `bert_jax/config/presets` (e.g. 'base', 'demo')."""
    files = importlib.resources.files("bert_jax.config.presets").iterdir()
    return sorted(f.name[:-3] for f in files if f.name.endswith(".py") and not f.name.startswith("_"))


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Runs `get_config()` of a packaged config (`path` is a name such as 'base') or of the Python
    file at `path`, then applies command-line overrides (`apply_overrides`). FileNotFoundError
    when `path` is neither; ValueError for a file without get_config() or a bad override."""
    # Our own loader rather than config_flags.DEFINE_config_file: it knows the packaged names,
    # and config_flags defers a missing file to the first attribute access and wraps errors of
    # get_config() in a multi-line traceback.
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
    return apply_overrides(module.get_config(), overrides)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Sets fields of `config` (in place; also returned) from command-line tokens such as
    `['--config.train.num_steps=50', '--config.model.dtype', 'bfloat16', '--config.model.remat']`,
    parsed by ml_collections' config_flags with each field's type.

    Raises ValueError in one line naming the field: an unknown section or field, a value of the
    wrong type (`--config.train.num_steps=many: expected an integer`), a token that is not an
    override, a flag without its value."""
    from absl import flags
    from ml_collections import config_flags

    tokens = list(overrides)
    if not tokens:
        return config
    for name in _override_names(tokens):
        _check_field(config, name)
    argv = ["bert-jax", *_join_bool_values(config, tokens)]
    flag_values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, lock_config=False,
                                        sys_argv=argv)
        rest = flag_values(argv)
    except flags.UnrecognizedFlagError as error:
        raise ValueError(f"unrecognized argument {error.flagvalue!r}; config overrides look like {EXAMPLE}") from None
    except flags.IllegalFlagValueError as error:
        raise ValueError(_type_error(config, str(error))) from None
    except flags.Error as error:  # a missing value, an order that overwrites an override
        raise ValueError(" ".join(str(error).split())) from None
    if rest[1:]:
        raise ValueError(f"unrecognized arguments: {' '.join(rest[1:])}; config overrides look like {EXAMPLE}")
    return config


_OVERRIDE = re.compile(r"^--(?:no)?config\.([^=]+)")


def _override_names(tokens: list[str]) -> list[str]:
    """'train.num_steps' of every `--config.train.num_steps[=...]` (and `--noconfig.x`) token."""
    return [m.group(1) for m in map(_OVERRIDE.match, tokens) if m]


def _check_field(config: ml_collections.ConfigDict, dotted: str) -> None:
    """ValueError naming `--config.DOTTED` when it is not a field of `config` (config_flags would
    raise a bare KeyError)."""
    *parents, field = dotted.split(".")
    node = config
    for name in parents:
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise ValueError(f"--config.{dotted}: no config section '{name}'")
        node = node[name]
    if field not in node:
        raise ValueError(f"--config.{dotted}: unknown field; {'.'.join(parents) or 'config'} has {sorted(node.keys())}")


def _field_type(config: ml_collections.ConfigDict, dotted: str) -> type:
    from ml_collections.config_flags import config_path

    return config_path.get_type(dotted, config)


def _join_bool_values(config: ml_collections.ConfigDict, tokens: list[str]) -> list[str]:
    """`--config.x true` -> `--config.x=true` for bool fields. absl's boolean flags take a value
    only after '='; the commands with overrides have no positional arguments, so a token after a
    bool field that is not a flag can only be its value (absl then checks it)."""
    out = []
    for token in tokens:
        previous = _OVERRIDE.match(out[-1]) if out else None
        if (previous and "=" not in out[-1] and not token.startswith("-") and out[-1].startswith("--config.")
                and _field_type(config, previous.group(1)) is bool):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _type_error(config: ml_collections.ConfigDict, message: str) -> str:
    """absl's 'flag --config.a.b=VALUE: REASON' as '--config.a.b=VALUE: expected an integer'."""
    match = re.match(r"flag --config\.([^=]+)=(.*?): ", message)
    if not match:
        return message.removeprefix("flag ")
    dotted, value = match.groups()
    expected = EXPECTED.get(_field_type(config, dotted), "another value")
    return f"--config.{dotted}={value}: expected {expected}"


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config that `pretrain` wrote into `workdir/config.json`. Mesh fields that runs
    before them did not record (`mesh.logical_axis_rules`) take their defaults."""
    import tensorflow as tf

    from bert_jax.config.defaults import mesh_config

    path = os.path.join(workdir, "config.json")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--workdir {workdir}: no config.json; not a pretraining workdir")
    with tf.io.gfile.GFile(path) as f:
        values = json.load(f)
    values.pop("data_dir", None)
    values["mesh"] = mesh_config().to_dict() | values.get("mesh", {})
    return ml_collections.ConfigDict(values)
