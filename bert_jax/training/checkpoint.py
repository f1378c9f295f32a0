"""Orbax checkpoints of the train state: async saves, `max_to_keep`, restore onto any mesh."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp

from bert_jax import fs


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the message names the step and the cause."""


class Checkpointer:
    """Saves (state, rng, extra) per step under `directory`; restores the latest onto given shardings.

    Saves run in the background; a failed save is raised (as CheckpointSaveError) by the next
    `check`, `save` or `close`, whichever comes first, so training stops at once instead of
    running on without checkpoints. Earlier checkpoints are never touched by a failed save.
    """

    def __init__(self, directory: str, max_to_keep: int, create: bool = True):
        """`max_to_keep` >= 1: the newest checkpoint is never deleted (orbax reads 0 as "keep none").
        `create=False` leaves `directory` absent until the first save, so that opening a workdir
        to check it writes nothing. Temporary directories of saves cut short (kill -9) are removed."""
        if max_to_keep < 1:
            raise ValueError(f"config.train.max_to_keep={max_to_keep}: must be >= 1, or the run's "
                             f"own checkpoints would be deleted")
        self.directory = fs.checkpoint_directory(directory)
        # Step directories are created synchronously: orbax's asynchronous creation reports a
        # failure (e.g. a read-only directory) only after its signalling timeout (300 s).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create, cleanup_tmp_directories=True, enable_async_checkpointing=True,
            async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False))
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.pending_step: int | None = None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _raise_failure(self, step: int | None, error: BaseException):
        raise CheckpointSaveError(f"the checkpoint of step {step} in {self.directory} could not be "
                                  f"written: {type(error).__name__}: {error}") from error

    def check(self) -> None:
        """Raises CheckpointSaveError when a background save has failed (cheap; call every step)."""
        try:
            self.manager.check_for_errors()
        except Exception as error:  # noqa: BLE001 - any failure of the save is reported with its step
            self._raise_failure(self.pending_step, error)

    def wait(self) -> None:
        """Blocks until the pending save is complete; raises CheckpointSaveError if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001
            self._raise_failure(self.pending_step, error)
        self.pending_step = None

    def save(self, step: int, state, rng, extra: dict | None = None) -> None:
        """Starts an asynchronous save of `state`, the base rng and JSON-able `extra` at `step`,
        after the previous save has completed."""
        self.check()
        self.wait()
        meta = {"step": step, "rng": np.asarray(jax.device_get(rng)).tolist(), "extra": extra or {}}
        self.pending_step = step
        try:
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as error:  # noqa: BLE001
            self._raise_failure(step, error)

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
        """Waits for pending saves (CheckpointSaveError if one failed) and releases the manager."""
        try:
            self.wait()
        finally:
            self.manager.close()
