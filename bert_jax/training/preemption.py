"""SIGTERM (e.g. a TPU VM maintenance event or a scheduler) as a flag the training loops check."""

from __future__ import annotations

import signal

import jax
import numpy as np


class Preemption:
    """Turns SIGTERM into a flag the loop checks between steps. With several processes the flags
    are combined every `sync_every` steps, so that a SIGTERM on any host stops every host at the
    same step for one coordinated save."""

    def __init__(self, sync_every: int = 10):
        self._local = False
        self._sync_every = sync_every
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self.requested = False

    def _handle(self, signum, frame):
        self._local = True

    def check(self, step: int) -> bool:
        if jax.process_count() == 1:
            self.requested = self._local
        elif step % self._sync_every == 0:
            from jax.experimental import multihost_utils

            self.requested = bool(np.any(multihost_utils.process_allgather(np.array(self._local))))
        return self.requested

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)
