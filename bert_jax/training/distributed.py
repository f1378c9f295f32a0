"""Starts JAX's multi-controller runtime when the launch environment asks for it."""

from __future__ import annotations

import os

import jax


def maybe_initialize() -> bool:
    """Calls `jax.distributed.initialize` for multi-process runs; returns whether it did.

    - GPU clusters / loopback tests: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
    - Cloud TPU pod slices: several TPU_WORKER_HOSTNAMES; JAX detects the rest itself.
    CPU processes exchange collectives over gloo.
    """
    coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
    tpu_workers = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if not coordinator and len(tpu_workers) < 2:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
            if name not in os.environ:
                raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {name} is not")
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
    return True
