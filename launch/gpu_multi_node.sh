#!/usr/bin/env bash
# Pretrain on several GPU nodes: one JAX process per node, all GPUs of the node each. Under SLURM
# (sbatch --nodes=N --ntasks-per-node=1 launch/gpu_multi_node.sh ...) the rank and peers come from
# SLURM; otherwise pass --coordinator HOST:PORT --num-nodes N --node-rank R on every node.
# bert-jax calls jax.distributed.initialize() when these variables are set.
#
#   launch/gpu_multi_node.sh --coordinator 10.0.0.1:12345 --num-nodes 2 --node-rank 0 \
#       --data /shared/data --workdir /shared/runs/large --config large [--dry-run]
set -euo pipefail

data="" workdir="" config="large" coordinator="" nodes="" rank="" dry_run="" overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --coordinator) coordinator="$2"; shift 2 ;;
    --num-nodes) nodes="$2"; shift 2 ;;
    --node-rank) rank="$2"; shift 2 ;;
    --config.*) overrides+=("$1"); shift ;;
    --dry-run) dry_run=1; shift ;;
    *) echo "gpu_multi_node.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$data" && -n "$workdir" ]] || { echo "gpu_multi_node.sh: --data and --workdir are required" >&2; exit 2; }

if [[ -n "${SLURM_JOB_ID:-}" && -z "$coordinator" ]]; then
  head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  coordinator="$head_node:12345" nodes="$SLURM_NNODES" rank="$SLURM_NODEID"
fi
[[ -n "$coordinator" && -n "$nodes" && -n "$rank" ]] || {
  echo "gpu_multi_node.sh: give --coordinator, --num-nodes and --node-rank (or run under SLURM)" >&2; exit 2; }

command=(env JAX_COORDINATOR_ADDRESS="$coordinator" JAX_NUM_PROCESSES="$nodes" JAX_PROCESS_ID="$rank"
         XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
         bert-jax pretrain --config "$config" --data "$data" --workdir "$workdir"
         "${overrides[@]}")
printf '%q ' "${command[@]}"; echo
[[ -n "$dry_run" ]] || exec "${command[@]}"
