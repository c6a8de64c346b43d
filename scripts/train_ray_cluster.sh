#!/usr/bin/env bash
# Training on an existing Ray cluster (KubeRay, VMs) through Ray Train: N workers, one GPU each
# when the config says accelerator gpu. The data store and output_dir must be on storage every
# node sees, and modelyard installed on every node.
#
#   RAY_ADDRESS=ray://head:10001 MLFLOW_TRACKING_URI=http://mlflow:5000 \
#     scripts/train_ray_cluster.sh 8 configs/train/transactions.yaml --config configs/train/gpu.yaml
set -euo pipefail
WORKERS=${1:?usage: $0 NUM_WORKERS CONFIG.yaml [overrides...]}
CONFIG=${2:?usage: $0 NUM_WORKERS CONFIG.yaml [overrides...]}
shift 2
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster (unset runs a local Ray: use modelyard train directly)}"
exec modelyard train --config "$CONFIG" --launcher ray --num-workers "$WORKERS" "$@"
