#!/usr/bin/env bash
# Pretrain on a Cloud TPU VM slice (e.g. v4-8, v5litepod-8): create, install, train on every worker,
# follow the logs, delete. Data and workdir live on GCS; every worker runs the same command and JAX
# finds its peers by itself (jax.distributed auto-detects TPU pods).
#
#   launch/tpu_vm.sh --name bert --zone us-central2-b --type v4-8 --project my-proj \
#       --repo https://github.com/ORG/bert_jax.git --data gs://bucket/data --workdir gs://bucket/runs/base \
#       --config base all [--dry-run]
#
# Steps: create | install | train | logs | delete | all (create, install, train, logs).
set -euo pipefail

name="bert-jax" zone="" type="v4-8" project="" version="tpu-ubuntu2204-base" spot=""
data="" workdir="" config="base" repo="" dry_run=""
overrides=() steps=()

usage() { sed -n '2,11p' "$0"; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --spot) spot="--spot"; shift ;;
    --data) data="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --config.*) overrides+=("$1"); shift ;;
    --dry-run) dry_run=1; shift ;;
    create|install|train|logs|delete|all) steps+=("$1"); shift ;;
    *) echo "tpu_vm.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ ${#steps[@]} -gt 0 ]] || usage
[[ -n "$zone" && -n "$project" ]] || { echo "tpu_vm.sh: --zone and --project are required" >&2; exit 2; }

run() {
  printf '%q ' "$@"; echo
  [[ -n "$dry_run" ]] || "$@"
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --project="$project" --worker=all --command="$1"
}

for step in "${steps[@]}"; do
  if [[ "$step" == all ]]; then set -- create install train logs; else set -- "$step"; fi
  for s in "$@"; do
    case "$s" in
      create)
        # shellcheck disable=SC2086  # $spot is empty or one flag
        run gcloud compute tpus tpu-vm create "$name" --zone="$zone" --project="$project" \
          --accelerator-type="$type" --version="$version" $spot ;;
      install)
        [[ -n "$repo" ]] || { echo "tpu_vm.sh: install needs --repo (a git URL of bert_jax)" >&2; exit 2; }
        ssh_all "pip install -U 'jax[tpu]' && git clone $repo bert_jax && pip install -e ./bert_jax" ;;
      train)
        [[ -n "$data" && -n "$workdir" ]] || { echo "tpu_vm.sh: train needs --data and --workdir" >&2; exit 2; }
        ssh_all "cd bert_jax && nohup bert-jax pretrain --config $config --data $data --workdir $workdir ${overrides[*]:-} > train.log 2>&1 &" ;;
      logs)
        run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --project="$project" --worker=0 \
          --command="tail -f bert_jax/train.log" ;;
      delete)
        run gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --project="$project" --quiet ;;
    esac
  done
done
