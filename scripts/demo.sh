#!/usr/bin/env bash
# The end-to-end demo on embedded defaults (run by `make demo`, which puts .venv/bin on PATH).
# data -> train (2 DDP CPU processes, one MLflow run) -> export (parity-gated ONNX + int8) ->
# Triton repository check -> MLflow registry as `champion` -> a real Triton endpoint answering
# requests from tritonclient. Everything lands in ./mlflow.db, ./mlartifacts, ./data, ./runs,
# ./exports and ./triton_models.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== 1/5 data: generate, validate, snapshot"
modelyard data --config configs/data/transactions.yaml

echo "== 2/5 train: 2 data-parallel CPU processes, one MLflow run"
modelyard train --config configs/train/transactions.yaml --trainer.devices 2 --trainer.strategy ddp

echo "== 3/5 export: ONNX behind the parity gate, an int8 variant, Triton repository, registry (champion)"
modelyard export --config configs/export/fraud.yaml

echo "== 4/5 check the Triton model repository offline"
modelyard triton validate triton_models

echo "== 5/5 serve it with Triton and send requests with tritonclient"
python scripts/demo_triton.py --repo triton_models --model fraud --snapshot transactions
modelyard registry history fraud
echo
echo "Browse everything: mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db"
