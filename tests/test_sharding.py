"""Mesh sharding on 8 fake CPU devices: data, FSDP and tensor parallel give single-device losses,
parameters are sharded as the rules say, and checkpoints move between meshes."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from test_pretrain import data_dir, tiny_config  # noqa: F401  (the module's data fixture)

from bert_jax.data import input_pipeline
from bert_jax.data.pretraining_data import load_metadata
from bert_jax.training.checkpoint import Checkpointer
from bert_jax.training.sharding import global_batch, make_mesh, mesh_shape
from bert_jax.training.train import setup

MESHES = [dict(data=8, fsdp=1, tensor=1), dict(data=1, fsdp=8, tensor=1), dict(data=4, fsdp=1, tensor=2),
          dict(data=2, fsdp=2, tensor=2)]


def _losses(data_dir, sizes, steps=3, devices=None, state=None, start=0):  # noqa: F811
    metadata = load_metadata(data_dir)
    config = tiny_config()
    config.mesh.update(sizes)
    config.model.update(hidden_dropout=0.1)  # dropout masks must not depend on the mesh either
    run = setup(config, metadata, mesh=make_mesh(sizes, devices))
    state = run.init(jax.random.PRNGKey(0)) if state is None else state
    losses = []
    for batch in input_pipeline.train_batches(data_dir, metadata, 16, steps, seed=0, mask_prob=0.15,
                                              shuffle_buffer=64, start_batch=start):
        state, metrics = run.train_step(state, global_batch(batch, run.mesh), jax.random.PRNGKey(7))
        metrics = jax.device_get(metrics)
        losses.append(metrics["mlm_loss_sum"] / metrics["mlm_weight"] + metrics["nsp_loss_sum"] / metrics["nsp_weight"])
    return np.array(losses), state, run


@pytest.fixture(scope="module")
def single_device(data_dir):  # noqa: F811
    losses, _, _ = _losses(data_dir, dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    return losses


@pytest.mark.parametrize("sizes", MESHES, ids=lambda s: "x".join(f"{k}{v}" for k, v in s.items() if v > 1))
def test_mesh_gives_single_device_losses(data_dir, single_device, sizes):  # noqa: F811
    losses, state, run = _losses(data_dir, sizes)
    np.testing.assert_allclose(losses, single_device, atol=1e-5)
    assert losses[-1] < losses[0]
    params = state.params
    kernel = params["bert"]["encoder"]["layer_0"]["intermediate"]["kernel"]  # ('embed', 'mlp')
    words = params["bert"]["embeddings"]["word_embeddings"]["embedding"]  # ('vocab', 'embed')
    query = params["bert"]["encoder"]["layer_0"]["query"]["kernel"]  # ('embed', 'heads', 'kv')
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert words.sharding.spec == P("tensor", "fsdp")
    assert query.sharding.spec == P("fsdp", "tensor", None)
    assert kernel.addressable_shards[0].data.shape == (32 // sizes["fsdp"], 64 // sizes["tensor"])
    mu = state.opt_state[1][0].mu["bert"]["encoder"]["layer_0"]["intermediate"]["kernel"]
    assert mu.sharding.spec == kernel.sharding.spec  # optimizer state sharded like the parameters


def test_checkpoint_restores_onto_another_mesh(data_dir, tmp_path):  # noqa: F811
    first = dict(data=8, fsdp=1, tensor=1)
    other = dict(data=2, fsdp=2, tensor=2)
    _, state, _ = _losses(data_dir, first, steps=2)
    checkpointer = Checkpointer(str(tmp_path / "ckpt"), 2)
    checkpointer.save(2, state, jax.random.PRNGKey(0))
    checkpointer.close()
    continued, _, _ = _losses(data_dir, first, steps=2, state=state, start=2)  # donates `state`
    run_other = setup(tiny_config(), load_metadata(data_dir), mesh=make_mesh(other))
    checkpointer = Checkpointer(str(tmp_path / "ckpt"), 2)
    restored, _, _ = checkpointer.restore(run_other.abstract_state)
    checkpointer.close()
    assert restored.params["mlm_bias"].sharding.spec == P("tensor")
    resumed, _, _ = _losses(data_dir, other, steps=2, state=restored, start=2)
    np.testing.assert_allclose(resumed, continued, atol=1e-5)


def test_mesh_shape_validation():
    assert mesh_shape(dict(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="needs 6 devices, there are 8"):
        mesh_shape(dict(data=3, fsdp=2, tensor=1), 8)
    with pytest.raises(ValueError, match="at most one of them -1"):
        mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
    with pytest.raises(ValueError, match="not divisible by 3"):
        mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)
