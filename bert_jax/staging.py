"""Outputs written whole or not at all, by one process at a time.

- `exclusive_lock(path)`: an flock on the sibling file `.NAME.lock`, so that a second process
  writing the same workdir or output is refused in one line instead of interleaving with the first.
  The kernel drops the lock when its process dies (also on kill -9), so a dead run never blocks.
- `check_output(output)`: before any work, `output` must be absent or an empty directory.
- `staged_directory(output)`: the output is written into a hidden sibling named after the output
  and the writing process's id, and renamed when complete; the staging directories that killed
  runs left for the same output are removed by the next run (which holds the lock, so no live
  writer can own them).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import sys
import tempfile


class OutputInUseError(FileExistsError):
    """Another process holds the lock of a workdir or output directory."""


def _lock_path(path: str) -> str:
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}.lock")


@contextlib.contextmanager
def exclusive_lock(path: str, flag: str, enabled: bool = True):
    """Holds an exclusive flock on `.NAME.lock` next to `path` (a file or directory that need not
    exist yet) for the duration of the block; the lock file is removed on exit.

    Raises OutputInUseError ("FLAG PATH is in use by pid N on HOST") when another process holds it.
    gs:// and other remote paths are not locked: object stores have no advisory locks, and the
    lock would have to be a lease object with expiry; run one writer per remote workdir.
    With `enabled=False` (processes other than 0 of a multi-host run) nothing is locked."""
    if not enabled or "://" in path:
        yield
        return
    lock_path = _lock_path(path)
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputInUseError(f"{flag} {path} is in use by {holder} (lock {lock_path}); wait for it "
                                   f"to finish or choose another path") from None
        try:  # the previous holder may have removed the file between our open and flock: retry
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    try:
        yield
    finally:
        os.unlink(lock_path)  # while still locked, so no one locks a file about to disappear
        os.close(fd)


def check_output(output: str, marker: str, what: str) -> None:
    """Raises FileExistsError (one line, naming `output`) unless `output` is absent or an empty
    directory: it holds `marker` (already finished: `what`), is a symbolic link (dangling or not:
    the final rename would replace the link, not write where it points), a file, or a non-empty
    directory."""
    if os.path.exists(os.path.join(output, marker)):
        raise FileExistsError(f"--output {output} already holds {what}; choose another directory")
    if os.path.islink(output):
        target = os.readlink(output)
        state = "" if os.path.exists(output) else ", which does not exist"
        raise FileExistsError(f"--output {output} is a symbolic link to {target}{state}; give a new "
                              f"directory path (not a link)")
    if os.path.exists(output) and not os.path.isdir(output):
        raise FileExistsError(f"--output {output} is a file, not a directory")
    if os.path.isdir(output) and os.listdir(output):
        entries = sorted(os.listdir(output))
        raise FileExistsError(f"--output {output} is a non-empty directory ({len(entries)} entries, e.g. "
                              f"{entries[0]!r}) without {marker}; choose a new or empty directory")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_staging(parent: str, prefix: str) -> list[str]:
    """Removes the directories `prefix + PID.*` in `parent` whose process is gone; returns them.

    Callers hold the output's lock, so no live writer of that output owns them; a pid that is
    still alive (reused, or a writer on another host sharing the disk) is reported, not removed."""
    removed = []
    for name in sorted(os.listdir(parent)):
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].split(".", 1)[0]
        path = os.path.join(parent, name)
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            print(f"removed {path}: staging directory of process {pid_text}, which is no longer running",
                  file=sys.stderr, flush=True)
        else:
            print(f"left {path} alone: staging directory of process {pid_text}, which is running",
                  file=sys.stderr, flush=True)
    return removed


@contextlib.contextmanager
def staged_directory(output: str, marker: str, what: str):
    """Locks `output`, checks it (`check_output`), removes stale staging directories of dead runs
    for it, and yields a fresh hidden sibling `.NAME.staging-PID.XXXX`. On success the sibling
    becomes `output` (an existing empty `output` is replaced); on any error it is removed, so
    nothing half-written looks finished. Enter it before any work: the checks come first."""
    parent, name = os.path.split(os.path.abspath(output))
    with exclusive_lock(output, "--output"):
        check_output(output, marker, what)
        prefix = f".{name}.staging-"
        remove_stale_staging(parent, prefix)
        staging = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", dir=parent)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700; the output gets the usual mode
        try:
            yield staging
            if os.path.isdir(output):
                os.rmdir(output)  # empty: check_output ran under the same lock
            os.rename(staging, output)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _umask() -> int:
    """The process's umask (os.umask can only be read by setting it; it is set back at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
