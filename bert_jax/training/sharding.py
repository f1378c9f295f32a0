"""Device mesh ('data', 'fsdp', 'tensor') and the placement of parameters, optimizer state and
activations on it by logical axis rules, both from the config's `mesh` section
(`bert_jax.config.defaults.mesh_config`)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves one -1 among the axis sizes to the remaining devices; validates the product."""
    shape = [int(sizes[axis]) for axis in MESH_AXES]
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))}: sizes must be positive, "
                         f"at most one of them -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))}: {num_devices} devices are "
                             f"not divisible by {known}")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                         f"there are {num_devices}")
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices=None) -> Mesh:
    """A mesh over `devices` (default: all) with axes ('data', 'fsdp', 'tensor')."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(sizes, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=auto)


def data_parallel_size(mesh: Mesh) -> int:
    """Number of distinct batch shards (data x fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches split on their leading axis over data x fsdp."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def axis_rules(mesh_config) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """Flax logical axis rules from `config.mesh.logical_axis_rules`: ((logical axis, mesh axis,
    a tuple of mesh axes or None), ...) in order; the lists of a config read from JSON become tuples.
    For `nn.logical_axis_rules(...)` and `logical_shardings`."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                 for name, axes in mesh_config.logical_axis_rules)


def logical_shardings(boxed_tree, mesh: Mesh, rules):
    """NamedShardings for a tree of (abstract) values boxed with logical axis names, placed by
    `rules` (`axis_rules(config.mesh)`)."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)


def placed_abstract(boxed_abstract, shardings):
    """ShapeDtypeStructs of an abstract boxed tree placed on `shardings` (what checkpoints restore into)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nn.meta.unbox(boxed_abstract), shardings)


def global_batch(batch: dict, mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays, split over data x fsdp, from this process's rows of every batch array."""
    data = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(data, v) for k, v in batch.items()}
