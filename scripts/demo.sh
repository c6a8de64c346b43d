#!/usr/bin/env bash
# The end-to-end demo on embedded defaults (run by `make demo`, which puts .venv/bin on PATH).
# Generates `transactions`, validates and snapshots it, trains with 2 DDP CPU processes tracked in
# the embedded MLflow store (./mlflow.db, ./mlartifacts), and says where to look.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== 1/2 data: generate, validate, snapshot"
modelyard data --config configs/data/transactions.yaml

echo "== 2/2 train: 2 data-parallel CPU processes, one MLflow run"
modelyard train --config configs/train/transactions.yaml --trainer.devices 2 --trainer.strategy ddp
