"""Loads a trained model for inference: config, parameters and tokenizer, on any machine.

A pretraining workdir is read parameters-only: orbax restores the `params` subtree of the latest
checkpoint (no optimizer state, step functions or training mesh), so a model trained on a TPU
slice or with `--config.mesh.fsdp=8` loads on a laptop's single device.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from flax import traverse_util

from bert_jax import fs
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.inference import hf
from bert_jax.models import hf_weights
from bert_jax.models.bert import BertConfig


@dataclasses.dataclass
class Pretrained:
    """A model ready for inference."""

    config: BertConfig
    params: dict
    tokenizer: tokenizer_lib.Tokenizer
    step: int


def save_params(params: dict, path: str) -> None:
    """Writes a parameter tree as float32 safetensors named 'a/b/c', under a temporary name that is
    renamed when complete (so an interrupted save never leaves a broken file)."""
    from safetensors.numpy import save

    flat = {"/".join(k): np.ascontiguousarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
    with fs.open_binary(path + ".tmp", "wb") as f:
        f.write(save(flat))
    fs.rename(path + ".tmp", path)


def load_params(path: str) -> dict:
    """The parameter tree `save_params` wrote."""
    from safetensors.numpy import load

    flat = load(fs.read_bytes(path))
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _workdir_config(workdir: str) -> BertConfig:
    """The model config that `pretrain` resolved into `workdir/config.json`."""
    path = os.path.join(workdir, "config.json")
    values = hf.read_json(path)
    if not isinstance(values.get("model"), dict):
        raise ValueError(f"{path}: no 'model' section; not written by `bert-jax pretrain`")
    try:
        return BertConfig.from_dict(values["model"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def restore_params(checkpoints: str, config: BertConfig, sharding: jax.sharding.Sharding | None = None
                   ) -> tuple[dict, int]:
    """(params, step) of the latest orbax checkpoint under `checkpoints` (as `bert_jax.training.checkpoint`
    writes them), restoring only the `params` subtree of the train state (no optimizer moments are
    read). Arrays are numpy on the host (`sharding=None`), or jax.Arrays placed on `sharding` (for
    example one device, or a NamedSharding replicated over a mesh); the training mesh plays no part.
    A checkpoint whose parameters differ from `config`'s is a one-line ValueError."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(checkpoints, options=ocp.CheckpointManagerOptions(create=False))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{checkpoints}: no complete checkpoint yet")
    item = {"params": hf_weights.abstract_params(config)}
    if sharding is None:
        restore_args = jax.tree.map(lambda a: ocp.RestoreArgs(restore_type=np.ndarray), item)
    else:
        restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=a.shape,
                                                                   dtype=a.dtype), item)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True)))["state"]["params"]
    except (ValueError, KeyError) as error:
        raise ValueError(f"{checkpoints}/{step} does not hold the parameters of the model config "
                         f"({str(error).splitlines()[0][:300]})") from None
    finally:
        manager.close()
    flat = traverse_util.flatten_dict(restored)
    for path, expected in traverse_util.flatten_dict(item["params"]).items():
        if isinstance(flat[path], jax.ShapeDtypeStruct):  # partial restore leaves what it did not find
            raise ValueError(f"{checkpoints}/{step} has no parameter {'/'.join(path)}, which the model config "
                             f"needs")
        if flat[path].shape != expected.shape:
            raise ValueError(f"{checkpoints}/{step}: parameter {'/'.join(path)} has shape {flat[path].shape}, "
                             f"the model config expects {expected.shape}")
    return restored, step


def check_workdir_tokenizer(workdir: str) -> None:
    """A pretraining workdir's tokenizer/ is the one its data (data_metadata.json) was made with."""
    path = os.path.join(workdir, "data_metadata.json")
    if not fs.exists(path):
        return
    with fs.open_text(path) as f:
        expected = json.load(f)["tokenizer"]["fingerprint"]
    found = tokenizer_lib.load(os.path.join(workdir, "tokenizer")).fingerprint
    if found != expected:
        raise ValueError(f"{workdir}/tokenizer (fingerprint {found}) is not the tokenizer the model was "
                         f"trained with ({expected} in {path}); restore it")


def load_workdir(workdir: str, sharding: jax.sharding.Sharding | None = None) -> Pretrained:
    """The latest checkpoint of a `bert-jax pretrain` workdir, parameters only, with its tokenizer."""
    check_workdir_tokenizer(workdir)
    config = _workdir_config(workdir)
    params, step = restore_params(os.path.join(workdir, "checkpoints"), config, sharding)
    return Pretrained(config, params, tokenizer_lib.load(os.path.join(workdir, "tokenizer")), step)


def load(directory: str, sharding: jax.sharding.Sharding | None = None) -> Pretrained:
    """A pretraining workdir (latest checkpoint + tokenizer), a workdir made by `import-hf` that
    has not trained yet, or a Hugging Face BERT directory (a relative path is taken from the
    current directory). Parameters are numpy arrays on the host, or jax.Arrays on `sharding` when
    one is given."""
    directory = fs.absolute(directory)
    if fs.exists(os.path.join(directory, "checkpoints")):
        return load_workdir(directory, sharding)
    imported = hf.load_imported(directory)
    if imported is not None:
        config, state = imported
        tok = tokenizer_lib.load(os.path.join(directory, "tokenizer"))
    elif fs.exists(os.path.join(directory, "config.json")):
        tok = hf.tokenizer_for(directory)
        config, state, _ = hf.read_hf_weights(directory)
    else:
        raise FileNotFoundError(f"{directory} is neither a bert-jax workdir (no checkpoints/) nor a "
                                f"Hugging Face model (no config.json)")
    params = hf_weights.params_from_hf(state, config)
    return Pretrained(config, params if sharding is None else jax.device_put(params, sharding), tok, 0)
