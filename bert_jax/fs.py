"""The one file-system layer: every path the project reads or writes goes through here.

Local paths use the standard library and never import TensorFlow (prepare-data forks its workers
only from a process without it); URLs (`gs://`, and every other scheme TensorFlow's file systems
register, e.g. `ram://`) use `tf.io.gfile`. We do not use `etils.epath` here: it knows only
`gs://`, `s3://` and `az://` (it rejects `ram://`, which the tests use as a non-local file system)
and imports TensorFlow for local paths when it is installed.

Local paths are made absolute once, where they enter (`absolute`): orbax rejects relative
checkpoint paths, and a path stored in config.json or metadata.json must not depend on the
current directory of the process that wrote it.
"""

from __future__ import annotations

import contextlib
import glob as glob_lib
import os
import shutil
import tempfile
from typing import IO, Iterator

CHECKPOINT_SCHEMES = ("gs://",)  # the URLs orbax/tensorstore can hold checkpoints in


def is_url(path: str) -> bool:
    """True for `scheme://...` paths (gs://, ram://, ...)."""
    return "://" in path


def absolute(path: str | None) -> str | None:
    """`path` made absolute against the current directory (`~` expanded); URLs and `tfds:` names
    are returned untouched, None stays None."""
    if path is None or is_url(path) or path.startswith("tfds:"):
        return path
    return os.path.abspath(os.path.expanduser(path))


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    _gfile().makedirs(path) if is_url(path) else os.makedirs(path, exist_ok=True)


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob pattern."""
    return sorted(_gfile().glob(pattern) if is_url(pattern) else glob_lib.glob(pattern))


def has_magic(pattern: str) -> bool:
    return glob_lib.has_magic(pattern)


def size(path: str) -> int:
    """Bytes in the file at `path`."""
    return _gfile().stat(path).length if is_url(path) else os.path.getsize(path)


def open_binary(path: str, mode: str = "rb") -> IO[bytes]:
    """The file at `path` opened in binary `mode` ('rb' or 'wb')."""
    return _gfile().GFile(path, mode) if is_url(path) else open(path, mode)


def open_text(path: str, mode: str = "r") -> IO[str]:
    """The file at `path` opened as UTF-8 text in `mode` ('r', 'w' or 'a')."""
    if is_url(path):
        return _gfile().GFile(path, mode)
    return open(path, mode, encoding="utf-8")


def read_bytes(path: str) -> bytes:
    with open_binary(path) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def copy(source: str, destination: str) -> None:
    """Copies one file (overwriting `destination`)."""
    if is_url(source) or is_url(destination):
        _gfile().copy(source, destination, overwrite=True)
    else:
        shutil.copyfile(source, destination)


def rename(source: str, destination: str) -> None:
    """Moves one file onto `destination` (replacing it): atomic for local paths."""
    if is_url(source) or is_url(destination):
        _gfile().rename(source, destination, overwrite=True)
    else:
        os.replace(source, destination)


def checkpoint_directory(path: str) -> str:
    """`path` as orbax needs it: absolute when local; a URL only on a file system orbax can write
    (`gs://`). Raises ValueError naming the path otherwise."""
    if is_url(path) and not path.startswith(CHECKPOINT_SCHEMES):
        raise ValueError(f"{path}: orbax checkpoints can be written to local directories and "
                         f"{', '.join(CHECKPOINT_SCHEMES)} only, not {path.split('://')[0]}://")
    return absolute(path)


@contextlib.contextmanager
def staged_output(output: str, marker: str, what: str) -> Iterator[str]:
    """Yields a local directory to fill; on success it becomes `output`. Local outputs use
    `staging.staged_directory` (locked, checked, renamed when complete; `what` names a finished
    output in its error). Remote object stores have no atomic directory rename, so a remote output
    is built in a local temporary directory and uploaded with `marker` (the file whose presence
    means "complete") last."""
    from bert_jax.staging import staged_directory

    if not is_url(output):
        with staged_directory(output, marker, what) as staging:
            yield staging
        return
    with tempfile.TemporaryDirectory(prefix=".bert-jax-staging-") as staging:
        yield staging
        upload_tree(staging, output, last=marker)


def upload_tree(local: str, remote: str, last: str) -> None:
    """Copies the files under directory `local` to `remote`, the top-level file `last` after all others."""
    names = []
    for root, _, files in os.walk(local):
        names += [os.path.relpath(os.path.join(root, name), local) for name in files]
    for name in sorted(names, key=lambda n: (n == last, n)):
        makedirs(os.path.dirname(os.path.join(remote, name)))
        copy(os.path.join(local, name), os.path.join(remote, name))
