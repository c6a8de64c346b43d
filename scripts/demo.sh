#!/usr/bin/env bash
# The end-to-end demo on embedded defaults (run by `make demo`, which puts .venv/bin on PATH).
# data -> train (2 DDP CPU processes, one MLflow run) -> export (parity-gated ONNX + int8) ->
# Triton repository check -> MLflow registry as `champion` -> a real Triton endpoint answering
# tritonclient -> a challenger trained and exported -> Ray Serve with champion and challenger ->
# a progressive rollout under generated traffic that promotes or rolls back on evidence.
# Everything lands in ./mlflow.db, ./mlartifacts, ./data, ./runs, ./exports and ./triton_models.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== 1/7 data: generate, validate, snapshot"
modelyard data --config configs/data/transactions.yaml

echo "== 2/7 train: 2 data-parallel CPU processes, one MLflow run"
modelyard train --config configs/train/transactions.yaml --trainer.devices 2 --trainer.strategy ddp

echo "== 3/7 export: ONNX behind the parity gate, an int8 variant, Triton repository, registry (champion)"
modelyard export --config configs/export/fraud.yaml

echo "== 4/7 check the Triton model repository offline"
modelyard triton validate triton_models

echo "== 5/7 serve it with Triton and send requests with tritonclient"
python scripts/demo_triton.py --repo triton_models --model fraud --snapshot transactions

echo "== 6/7 a challenger: a wider network, exported as fraud@challenger"
modelyard train --config configs/train/transactions.yaml --trainer.devices 1 --trainer.strategy auto \
  --model.init_args.hidden_sizes '[128, 64]' --trainer.max_epochs 4
modelyard export --config configs/export/fraud.yaml --variants '[]' --alias challenger

echo "== 7/7 Ray Serve (KServe v2) with champion and challenger; a progressive rollout decides"
python scripts/demo_rollout.py --model fraud --snapshot transactions
modelyard registry history fraud
echo
echo "Browse everything: mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db"
