#!/usr/bin/env bash
# The end-to-end demo on embedded defaults (run by `make demo`, which puts .venv/bin on PATH).
# data -> train (2 DDP CPU processes, one MLflow run) -> export (parity-gated ONNX + int8) ->
# Triton repository check -> MLflow registry as `champion` -> a real Triton endpoint answering
# tritonclient -> the closed loop on Ray Serve: normal traffic, injected drift, detection,
# retraining on recent labelled data, export as `challenger`, canary rollout, promotion.
# Everything lands in ./mlflow.db, ./mlartifacts, ./data, ./runs, ./exports, ./triton_models,
# ./inference_log, ./monitor and ./rollouts.
#
# `bash scripts/demo.sh text` and `bash scripts/demo.sh images` (`make demo WORKLOAD=text|images`) run
# the same loop for the text workload (token ids + attention mask, a tokenizer that travels with the
# model) and the images workload (UINT8 pixels), which generate their data (no `modelyard data` step):
# train v1 on 2 DDP processes, export it with the inferred signature behind the parity gate (every
# output) as `champion`, check the Triton repository, serve it on Triton and compare tritonclient's
# answers with ONNX Runtime; then the loop on Ray Serve (configs/monitor/text-topics.yaml, images.yaml):
# normal traffic (text: raw texts as a BYTES input that the ingress tokenises with each version's own
# tokenizer; images: UINT8 pixels) with its labels fed back and a quiet check; drift injected with the
# workload's knobs (text: three times as many sport texts; images: a striped background); the check sees
# the embedding drift and retrains through the workload's built-in hook on the logged inputs (text: every
# request's token ids; images: the pixels of half the requests) and their labels, exports the new model
# as `challenger`, canaries it, rolls it out 10% -> 50% -> 100% on live traffic and accuracy and promotes
# it; the new champion's first check on the same drifted traffic is quiet.
# Everything lands in ./mlflow.db, ./mlartifacts, ./runs, ./exports, ./triton_models, ./inference_log,
# ./monitor and ./rollouts.
set -euo pipefail
cd "$(dirname "$0")/.."

workload="${1:-fraud}"
case "$workload" in
  fraud) ;;
  text|images)
    train_config="configs/train/${workload}.yaml"; export_config="configs/export/${workload}.yaml"
    monitor_config="configs/monitor/${workload}.yaml"
    if [ "$workload" = text ]; then
      train_config=configs/train/text-topics.yaml; export_config=configs/export/text-topics.yaml
      monitor_config=configs/monitor/text-topics.yaml
    fi
    echo "== 1/5 train v1: 2 data-parallel CPU processes on the generated $workload data, one MLflow run"
    modelyard train --config "$train_config" --trainer.devices 2 --trainer.strategy ddp
    echo "== 2/5 export v1: signature inferred from the validation batches, parity gated on every output, registry (champion)"
    modelyard export --config "$export_config"
    echo "== 3/5 check the Triton model repository offline"
    modelyard triton validate triton_models
    echo "== 4/5 serve v1 with Triton and send test examples with tritonclient"
    python scripts/demo_workload.py --workload "$workload"
    echo "== 5/5 the loop on Ray Serve: traffic, drift, detection, retraining from the logged inputs, canary, promotion"
    python scripts/demo_loop.py --workload "$workload"
    modelyard monitor history --config "$monitor_config"
    echo
    echo "Drift report: monitor/$workload/incidents/0001/report/report.html"
    echo "Browse everything: mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db"
    exit 0;;
  *) echo "usage: bash scripts/demo.sh [fraud|text|images]" >&2; exit 2;;
esac

echo "== 1/6 data: generate, validate, snapshot"
modelyard data --config configs/data/transactions.yaml

echo "== 2/6 train v1: 2 data-parallel CPU processes, one MLflow run"
modelyard train --config configs/train/transactions.yaml --trainer.devices 2 --trainer.strategy ddp

echo "== 3/6 export: ONNX behind the parity gate, an int8 variant, Triton repository, registry (champion)"
modelyard export --config configs/export/fraud.yaml

echo "== 4/6 check the Triton model repository offline"
modelyard triton validate triton_models

echo "== 5/6 serve it with Triton and send requests with tritonclient"
python scripts/demo_triton.py --repo triton_models --model fraud --snapshot transactions

echo "== 6/6 the loop on Ray Serve: traffic, drift, detection, retraining, canary, promotion"
python scripts/demo_loop.py --workload fraud --config configs/monitor/fraud.yaml \
  --drift configs/data/transactions_drifted.yaml
modelyard monitor history --config configs/monitor/fraud.yaml
echo
echo "Drift report: monitor/fraud/incidents/0001/report/report.html"
echo "Browse everything: mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db"
