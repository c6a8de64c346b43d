#!/usr/bin/env bash
# Serve triton_models/ with NVIDIA's Triton Inference Server container on a GPU machine.
#
# The repository written by `modelyard export` (<model>/<version>/model.onnx + config.pbtxt) is
# loaded as written by the container's onnxruntime backend: CUDA / TensorRT execution providers,
# model_warmup and instance groups on the GPUs all apply. `modelyard serve triton` serves the same
# model with the same name, tensors and batching on machines without the container (pytriton's
# tritonserver + ONNX Runtime), so clients work unchanged against either.
#
#   scripts/triton_container.sh                     # ./triton_models on ports 8000/8001/8002
#   REPO=/data/triton_models HTTP_PORT=9000 scripts/triton_container.sh --log-verbose=1
#
# Extra arguments go to tritonserver. Needs docker and the NVIDIA Container Toolkit (--gpus).
# The image is pinned: 24.10 ships Triton 2.51.0, the server version bundled in nvidia-pytriton
# 0.7.0, so both paths speak the same protocol and parse config.pbtxt with the same schema.
# --model-control-mode=none loads every model of the repository at startup and never reloads;
# --strict-model-config=true serves config.pbtxt exactly as written (no auto-completion).
set -euo pipefail
IMAGE=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}
REPO=${REPO:-$PWD/triton_models}
HTTP_PORT=${HTTP_PORT:-8000}
GRPC_PORT=${GRPC_PORT:-8001}
METRICS_PORT=${METRICS_PORT:-8002}
if ! compgen -G "$REPO/*/config.pbtxt" >/dev/null; then
  echo "error: no <model>/config.pbtxt under $REPO; run \`modelyard export\` first or set REPO=<repository>" >&2
  exit 2
fi
REPO=$(cd "$REPO" && pwd)  # docker -v needs an absolute path
exec docker run --gpus all --rm \
  -p "$HTTP_PORT:8000" -p "$GRPC_PORT:8001" -p "$METRICS_PORT:8002" \
  -v "$REPO:/models" \
  "$IMAGE" \
  tritonserver --model-repository=/models --model-control-mode=none --strict-model-config=true "$@"
