#!/usr/bin/env bash
# Data-parallel training on the GPUs of one node, one process per GPU started by torchrun.
# Lightning detects the torchrun environment and launches nothing itself; rank 0 owns the MLflow run.
#
#   scripts/train_torchrun.sh NUM_GPUS CONFIG.yaml [--key.path value ...]
#   scripts/train_torchrun.sh 8 configs/train/transactions.yaml --trainer.max_epochs 20
#
# Several nodes: run this on every node with NNODES, NODE_RANK and MASTER_ADDR set.
set -euo pipefail
NGPU=${1:?usage: $0 NUM_GPUS CONFIG.yaml [overrides...]}
CONFIG=${2:?usage: $0 NUM_GPUS CONFIG.yaml [overrides...]}
shift 2
NNODES=${NNODES:-1}
if [ "$NNODES" -gt 1 ]; then
  RDZV=(--nnodes "$NNODES" --node_rank "${NODE_RANK:?}" --rdzv_backend c10d
        --rdzv_endpoint "${MASTER_ADDR:?}:${MASTER_PORT:-29500}" --rdzv_id "${RDZV_ID:-modelyard}")
else
  RDZV=(--standalone)
fi
exec torchrun "${RDZV[@]}" --nproc_per_node "$NGPU" -m modelyard.cli train \
  --config "$CONFIG" --config configs/train/gpu.yaml \
  --trainer.devices "$NGPU" --trainer.num_nodes "$NNODES" "$@"
