"""What the train step does differently per JAX backend ('cpu', 'gpu', 'tpu'), decided here only.

- Compute dtype 'auto': bfloat16 on GPU and TPU (tensor cores / MXU), float32 on CPU, where
  XLA:CPU has no fast bfloat16 matmuls. Parameters, optimizer state, the loss, softmax and
  LayerNorm statistics stay float32 everywhere.
- Hand-written gradients (the cross-entropy VJP in `train_step`, `model.add_bias`): only on CPU.
  They exist because XLA:CPU builds the one-hot matrix of autodiff's cross-entropy gradient and
  reduces over leading axes slowly (95 ms vs 4 ms for the MLM bias); GPU and TPU compilers fuse
  the plain autodiff versions, so those are used there (no A/B on an accelerator yet: README).
- Dropout random bits: the counter-based 'threefry2x32' hash costs ~10 ALU ops per 32 bits and
  on GPU/TPU shows up as separate fusions next to every dropout; the hardware-friendly
  'unsafe_rbg' generator (XLA RngBitGenerator) is used there. The root key (checkpointed) stays
  threefry, so checkpoints are the same on every backend.
- Attention 'auto': cuDNN flash attention on GPU when its conditions hold (bfloat16/float16,
  head dim a multiple of 8 up to 128, no attention-probability dropout), XLA's fused softmax
  attention otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ACCELERATORS = ("gpu", "tpu")


def current() -> str:
    """The platform the step is traced for: jax.default_backend() ('cpu', 'gpu' or 'tpu')."""
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
