#!/usr/bin/env bash
# Serve triton_models/ with NVIDIA's Triton Inference Server container on a GPU machine.
#
# The repository written by `modelyard export` (<model>/<version>/model.onnx + config.pbtxt) is
# loaded as written by the container's onnxruntime backend: CUDA / TensorRT execution providers,
# model_warmup and instance groups on the GPUs all apply. `modelyard serve triton` serves the same
# model with the same name, tensors and batching on machines without the container (pytriton's
# tritonserver + ONNX Runtime), so clients work unchanged against either.
#
#   scripts/triton_container.sh                     # ./triton_models on 127.0.0.1:8000/8001/8002
#   REPO=/data/triton_models HTTP_PORT=9000 scripts/triton_container.sh --log-verbose=1
#   BIND_ADDRESS=10.0.0.5 scripts/triton_container.sh   # a private address a gateway reaches
#
# Extra arguments go to tritonserver. Needs docker and the NVIDIA Container Toolkit (--gpus).
# The image is pinned: 24.10 ships Triton 2.51.0, the server version bundled in nvidia-pytriton
# 0.7.0, so both paths speak the same protocol and parse config.pbtxt with the same schema.
#
# Access (docs/access.md):
# --model-control-mode=none loads every model of the repository at startup and never loads or
#   unloads one on request: the repository API cannot change what is served.
# --strict-model-config=true serves config.pbtxt exactly as written (no auto-completion).
# The repository is mounted read-only.
# The repository, statistics, trace, logging and shared-memory APIs need the header
#   triton-access-token (gRPC: triton-grpc-protocol-triton-access-token) with $TRITON_ACCESS_TOKEN,
#   a random one per start when unset (as pytriton does for `modelyard serve triton`).
# Ports are published on $BIND_ADDRESS, 127.0.0.1 by default. Triton 2.51 answers many malformed
#   JSON requests with HTTP 500 and aborts on an HTTP/JSON request that declares a huge dimension:
#   do not publish it to untrusted clients; put the Ray Serve ingress or a gateway in front, and
#   run the container under a restart policy (e.g. --restart=on-failure via DOCKER_ARGS).
set -euo pipefail
IMAGE=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}
REPO=${REPO:-$PWD/triton_models}
BIND_ADDRESS=${BIND_ADDRESS:-127.0.0.1}
HTTP_PORT=${HTTP_PORT:-8000}
GRPC_PORT=${GRPC_PORT:-8001}
METRICS_PORT=${METRICS_PORT:-8002}
if ! compgen -G "$REPO/*/config.pbtxt" >/dev/null; then
  echo "error: no <model>/config.pbtxt under $REPO; run \`modelyard export\` first or set REPO=<repository>" >&2
  exit 2
fi
REPO=$(cd "$REPO" && pwd)  # docker -v needs an absolute path
if [[ -z "${TRITON_ACCESS_TOKEN:-}" ]]; then
  TRITON_ACCESS_TOKEN=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
fi
RESTRICTED="model-repository,statistics,trace,logging,shared-memory:triton-access-token=$TRITON_ACCESS_TOKEN"
# shellcheck disable=SC2086 # DOCKER_ARGS is a list of options on purpose
exec docker run --gpus all --rm ${DOCKER_ARGS:-} \
  -p "$BIND_ADDRESS:$HTTP_PORT:8000" -p "$BIND_ADDRESS:$GRPC_PORT:8001" -p "$BIND_ADDRESS:$METRICS_PORT:8002" \
  -v "$REPO:/models:ro" \
  "$IMAGE" \
  tritonserver --model-repository=/models --model-control-mode=none --strict-model-config=true \
  "--http-restricted-api=$RESTRICTED" "--grpc-restricted-protocol=$RESTRICTED" "$@"
