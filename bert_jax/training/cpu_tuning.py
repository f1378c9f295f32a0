"""Settings that make training faster on CPU hosts: glibc malloc tunables and XLA:CPU options.

Malloc: XLA:CPU allocates each step's temporary buffers with malloc and frees them afterwards. With
glibc's defaults, buffers above the (adaptive) mmap threshold come from fresh mmaps, so every step
page-faults its whole working set in again: about 260,000 4 KiB faults and a fifth of the step's
CPU time in the kernel for the mini benchmark config. Transparent huge pages for malloc's memory
(`glibc.malloc.hugetlb=1`, glibc >= 2.35), a fixed 32 MiB mmap threshold and a 4 GiB trim
threshold keep freed memory for reuse and cut that to about 1,200 faults per step. glibc reads
these tunables only at process start, hence the re-exec. Set BERT_JAX_MALLOC_TUNING=0, or
GLIBC_TUNABLES yourself, to keep the process as it is. GPU and TPU hosts are left alone (the
step's buffers live in device memory there): `cpu_host` decides without importing jax.

Compiler: XLA:CPU hands matrix multiplies and reductions to YNNPACK by default. On BERT's
shapes (4096 x 768 x 3072 and 4096 x 768 x 768, float32, 2 threads) its Eigen path multiplies
10-20% faster, so jitted steps on CPU meshes keep YNNPACK for reductions only (the mini
benchmark step runs 5% faster than with YNNPACK matmuls, and 8% faster than without YNNPACK).
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import platform
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jax

TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:"
            "glibc.malloc.trim_threshold=4294967296")


# Device files of accelerators JAX would pick over the CPU: NVIDIA GPUs, AMD GPUs (ROCm), TPUs
# (v4 and later expose /dev/accel*).
ACCELERATOR_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*")


def cpu_host(environ: Mapping[str, str], device_files=ACCELERATOR_DEVICE_FILES) -> bool:
    """Whether JAX will compute on the CPU here, decided cheaply (no jax import): the first
    entry of JAX_PLATFORMS when that is set; otherwise True unless an accelerator device file
    (`device_files`, glob patterns) exists or the `libtpu` package is installed."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return (not any(glob.glob(pattern) for pattern in device_files)
            and importlib.util.find_spec("libtpu") is None)


def tuned_environment(environ: Mapping[str, str], libc: str) -> dict[str, str] | None:
    """The environment to re-execute with, or None when the process should run as it is
    (not glibc, tunables already set, tuning switched off, or not a CPU host: `cpu_host`)."""
    if libc != "glibc" or "GLIBC_TUNABLES" in environ or environ.get("BERT_JAX_MALLOC_TUNING") == "0":
        return None
    if not cpu_host(environ):
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


CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(mesh: jax.sharding.Mesh) -> dict[str, str] | None:
    """XLA options for jitting a train or eval step on `mesh`: `CPU_COMPILER_OPTIONS` on CPU;
    none on accelerators or when this jaxlib lacks the option."""
    if mesh.devices.flat[0].platform != "cpu" or not _cpu_options_supported():
        return None
    return CPU_COMPILER_OPTIONS


@functools.cache
def _cpu_options_supported() -> bool:
    import jax
    import jax.numpy as jnp

    matmul = jax.jit(jnp.matmul, compiler_options=CPU_COMPILER_OPTIONS)
    try:
        matmul.lower(jnp.ones((2, 2)), jnp.ones((2, 2))).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True
