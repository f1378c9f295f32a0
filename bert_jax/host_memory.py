"""glibc malloc settings for training processes, applied by re-executing the process.

XLA:CPU allocates each step's temporary buffers with malloc and frees them afterwards. With
glibc's defaults, buffers above the (adaptive) mmap threshold come from fresh mmaps, so every step
page-faults its whole working set in again: about 260,000 4 KiB faults and a fifth of the step's
CPU time in the kernel for the mini benchmark config. Transparent huge pages for malloc's memory
(`glibc.malloc.hugetlb=1`, glibc >= 2.35), a fixed 32 MiB mmap threshold and a 4 GiB trim
threshold keep freed memory for reuse and cut that to about 1,200 faults per step. glibc reads
these tunables only at process start, hence the re-exec. Set BERT_JAX_MALLOC_TUNING=0, or
GLIBC_TUNABLES yourself, to keep the process as it is.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:"
            "glibc.malloc.trim_threshold=4294967296")


def tuned_environment(environ: Mapping[str, str], libc: str) -> dict[str, str] | None:
    """The environment to re-execute with, or None when the process should run as it is
    (not glibc, tunables already set, or tuning switched off)."""
    if libc != "glibc" or "GLIBC_TUNABLES" in environ or environ.get("BERT_JAX_MALLOC_TUNING") == "0":
        return None
    return dict(environ) | {"GLIBC_TUNABLES": TUNABLES}


def reexec_with_tuned_malloc() -> None:
    """Runs this process's command line again (`sys.orig_argv`, interpreter options included)
    with the tuned malloc environment; returns without doing anything when `tuned_environment`
    says so. Call it before any heavy import."""
    environ = tuned_environment(os.environ, platform.libc_ver()[0])
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
