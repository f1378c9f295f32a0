"""Analytic training FLOPs of BertForPreTraining and device peak rates, for MFU."""

from __future__ import annotations

from bert_jax.models.bert import BertConfig

# Dense bf16 peak TFLOP/s per device (vendor figures), keyed by substrings of jax device_kind.
PEAK_TFLOPS = {"TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0,
               "TPU v6": 918.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "V100": 125.0}


def forward_flops_per_sequence(config: BertConfig, seq_len: int, predictions: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one forward pass over one sequence; the MLM head
    runs at `predictions` gathered positions."""
    h, i, s = config.hidden_size, config.intermediate_size, seq_len
    per_layer = 2 * s * (4 * h * h + 2 * h * i) + 2 * 2 * s * s * h  # projections, FFN, QK^T and PV
    heads = 2 * h * h + 2 * h * 2 + predictions * (2 * h * h + 2 * h * config.vocab_size)
    return config.num_layers * per_layer + heads


def train_flops_per_sequence(config: BertConfig, seq_len: int, predictions: int) -> float:
    """Forward + backward (twice the forward) FLOPs of one training sequence."""
    return 3 * forward_flops_per_sequence(config, seq_len, predictions)


def peak_tflops(device_kind: str, configured: float = 0.0) -> float | None:
    """Peak TFLOP/s of one device: `configured` if set, else a lookup of the device kind."""
    if configured > 0:
        return configured
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in device_kind.lower():
            return value
    return None
