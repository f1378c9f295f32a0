"""Everything that differs per platform ('cpu', 'gpu', 'tpu'), decided in this module only.

The README's "Platform switches" table lists each switch with its measured effect.

Step variants, chosen by the platform the step is traced for (`current()`):

- Compute dtype 'auto': bfloat16 on GPU and TPU (tensor cores / MXU), float32 on CPU, where
  XLA:CPU has no fast bfloat16 matmuls. Parameters, optimizer state, the loss, softmax and
  LayerNorm statistics stay float32 everywhere.
- Hand-written gradients (the cross-entropy VJP in `train_step`, `models.bert.add_bias`): only on
  CPU. They exist because XLA:CPU builds the one-hot matrix of autodiff's cross-entropy gradient
  and reduces over leading axes slowly (95 ms vs 4 ms for the MLM bias); GPU and TPU compilers
  fuse the plain autodiff versions, so those are used there (no A/B on an accelerator yet).
- Dropout random bits: the counter-based 'threefry2x32' hash costs ~10 ALU ops per 32 bits and
  on GPU/TPU shows up as separate fusions next to every dropout; the hardware-friendly
  'unsafe_rbg' generator (XLA RngBitGenerator) is used there. The root key (checkpointed) stays
  threefry, so checkpoints are the same on every backend.
- Attention 'auto': cuDNN flash attention on GPU when its conditions hold (bfloat16/float16,
  head dim a multiple of 8 up to 128, no attention-probability dropout), XLA's fused softmax
  attention otherwise.
- XLA:CPU compiler options (`compiler_options`, by the platform of the step's mesh): XLA:CPU
  hands matrix multiplies and reductions to YNNPACK by default. On BERT's shapes (4096 x 768 x
  3072 and 4096 x 768 x 768, float32, 2 threads) its Eigen path multiplies 10-20% faster, so
  steps jitted on CPU meshes keep YNNPACK for reductions only (the mini benchmark step runs 5%
  faster than with YNNPACK matmuls, and 8% faster than without YNNPACK). Accelerator meshes get
  no extra options.

Host setting, decided before JAX is imported (`reexec_with_tuned_malloc`, called at the entry of
the CLI's training commands and of the CPU benchmarks):

- glibc malloc tunables. XLA:CPU allocates each step's temporary buffers with malloc and frees
  them afterwards. With glibc's defaults, buffers above the (adaptive) mmap threshold come from
  fresh mmaps, so every step page-faults its whole working set in again: about 260,000 4 KiB
  faults and a fifth of the step's CPU time in the kernel for the mini benchmark config.
  Transparent huge pages for malloc's memory (`glibc.malloc.hugetlb=1`, glibc >= 2.35), a fixed
  32 MiB mmap threshold and a 4 GiB trim threshold keep freed memory for reuse and cut that to
  about 1,200 faults per step. glibc reads these tunables only at process start, hence the
  re-exec. Set BERT_JAX_MALLOC_TUNING=0, or GLIBC_TUNABLES yourself, to keep the process as it is.
- It runs only where JAX will compute on the CPU (`cpu_host`); on GPU and TPU hosts the step's
  buffers live in device memory and the process is left alone. The rule mirrors how JAX picks
  its default backend without paying for it: importing jax and asking `jax.default_backend()`
  initialises every installed plugin (seconds, and the accelerators' memory), which must not
  happen before a re-exec. JAX uses the first entry of JAX_PLATFORMS when that is set; otherwise
  it prefers an accelerator whose plugin finds a device, and a plugin finds one only where the
  driver's device files exist (NVIDIA: /dev/nvidiactl and /dev/nvidiaN; AMD ROCm: /dev/kfd; TPU
  v4 and later: /dev/accelN) or, for TPUs exposed through VFIO (v5e, v6e), where the `libtpu`
  package is installed. A CPU-only host with a JAX accelerator plugin but no device files
  computes on the CPU and is tuned; a TPU VM is never tuned.

This module imports JAX only inside the functions that need it, so that the CLI can call
`reexec_with_tuned_malloc` before anything heavy is loaded.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import platform as platform_module
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jax

ACCELERATORS = ("gpu", "tpu")


def current() -> str:
    """The platform the step is traced for: jax.default_backend() ('cpu', 'gpu' or 'tpu')."""
    import jax

    return jax.default_backend()


def compute_dtype_name(requested: str, platform: str) -> str:
    """`requested` ('auto', 'float32', 'bfloat16', 'float16') resolved for `platform`."""
    if requested != "auto":
        return requested
    return "bfloat16" if platform in ACCELERATORS else "float32"


def hand_written_gradients(platform: str) -> bool:
    """Whether the CPU-tuned custom VJPs replace autodiff (True on CPU only)."""
    return platform == "cpu"


def dropout_key(rng: jax.Array, platform: str) -> jax.Array:
    """The key dropout draws from: `rng` itself on CPU; on accelerators an 'unsafe_rbg' key
    seeded from 128 bits of `rng` (a raw uint32[2] threefry key or a typed key)."""
    import jax
    import jax.numpy as jnp

    if platform not in ACCELERATORS:
        return rng
    return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="unsafe_rbg")


def attention_implementation(requested: str, platform: str, dtype: str, head_dim: int,
                             dropout: bool) -> str:
    """'xla', 'cudnn' or 'explicit' (scores materialised, for attention-probability dropout).

    Raises ValueError (naming config.model.attention_impl) when 'cudnn' is requested where it
    cannot run: not on GPU, float32 compute, an unsupported head dim, or with dropout."""
    if requested == "cudnn":
        problem = (f"needs a GPU, but this backend is {platform}" if platform != "gpu" else
                   f"needs dtype bfloat16 or float16, got {dtype}" if dtype not in ("bfloat16", "float16") else
                   f"needs a head dim that is a multiple of 8 up to 128, got {head_dim}"
                   if head_dim % 8 or head_dim > 128 else
                   "has no attention-probability dropout; set attention_dropout=0" if dropout else None)
        if problem:
            raise ValueError(f"config.model.attention_impl='cudnn' {problem} (or use 'auto' / 'xla')")
        return "cudnn"
    if dropout:
        return "explicit"
    if (requested == "auto" and platform == "gpu" and dtype in ("bfloat16", "float16")
            and head_dim % 8 == 0 and head_dim <= 128):
        return "cudnn"
    return "xla"


# --- CPU hosts: malloc tunables (before JAX is imported) ---------------------------------------

TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:"
            "glibc.malloc.trim_threshold=4294967296")


# Device files of accelerators JAX would pick over the CPU: NVIDIA GPUs, AMD GPUs (ROCm), TPUs
# (v4 and later expose /dev/accel*).
ACCELERATOR_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*")


def cpu_host(environ: Mapping[str, str], device_files=ACCELERATOR_DEVICE_FILES) -> bool:
    """Whether JAX will compute on the CPU here, decided without importing jax (the rule and why:
    module docstring): the first entry of JAX_PLATFORMS is 'cpu' when that is set; otherwise no
    accelerator device file (`device_files`, glob patterns) exists and the `libtpu` package is
    not installed."""
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
    environ = tuned_environment(os.environ, platform_module.libc_ver()[0])
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


# --- XLA:CPU compiler options of the jitted steps -------------------------------------------------

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
