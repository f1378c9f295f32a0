"""Write a directory under a temporary name and rename it only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def staged_directory(output: str, prefix: str):
    """Yields a temporary sibling of `output`; on success it becomes `output` (an existing empty
    `output` is replaced), on any error it is removed, so nothing half-written looks finished."""
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700; the output gets the usual mode
    try:
        yield staging
        if os.path.isdir(output) and not os.listdir(output):
            os.rmdir(output)
        os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    """The process's umask (os.umask can only be read by setting it; it is set back at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
