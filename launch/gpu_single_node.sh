#!/usr/bin/env bash
# Pretrain on all GPUs of one machine: one JAX process drives every local GPU (data parallel by
# default; set --config.mesh.fsdp / --config.mesh.tensor for larger models).
#
#   launch/gpu_single_node.sh --data data --workdir runs/base --config base \
#       [--config.model.attention_dropout=0 ...] [--dry-run]
# Compute dtype (bfloat16 on GPUs) and attention kernel follow the config's "auto" defaults.
set -euo pipefail

data="" workdir="" config="base" dry_run="" overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --config.*) overrides+=("$1"); shift ;;
    --dry-run) dry_run=1; shift ;;
    *) echo "gpu_single_node.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$data" && -n "$workdir" ]] || { echo "gpu_single_node.sh: --data and --workdir are required" >&2; exit 2; }

command=(env XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
         XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"
         bert-jax pretrain --config "$config" --data "$data" --workdir "$workdir"
         "${overrides[@]}")
printf '%q ' "${command[@]}"; echo
[[ -n "$dry_run" ]] || exec "${command[@]}"
