"""Orbax checkpoints of the train state: async saves, `max_to_keep`, restore onto any mesh."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves (state, rng, extra) per step under `directory`; restores the latest onto given shardings."""

    def __init__(self, directory: str, max_to_keep: int, create: bool = True):
        """`max_to_keep` >= 1: the newest checkpoint is never deleted (orbax reads 0 as "keep none").
        `create=False` leaves `directory` absent until the first save, so that opening a workdir
        to check it writes nothing. Temporary directories of saves cut short (kill -9) are removed."""
        if max_to_keep < 1:
            raise ValueError(f"config.train.max_to_keep={max_to_keep}: must be >= 1, or the run's "
                             f"own checkpoints would be deleted")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                               cleanup_tmp_directories=True,
                                               enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, rng, extra: dict | None = None) -> None:
        """Starts an asynchronous save of `state`, the base rng and JSON-able `extra` at `step`."""
        meta = {"step": step, "rng": np.asarray(jax.device_get(rng)).tolist(), "extra": extra or {}}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, abstract_state, step: int | None = None):
        """(state, rng, extra) of `step` (default: the latest) laid out as `abstract_state`
        (ShapeDtypeStructs with shardings), or None when there is no checkpoint."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        rng = jax.numpy.asarray(np.asarray(restored["meta"]["rng"], np.uint32))
        return restored["state"], rng, restored["meta"].get("extra", {})

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
