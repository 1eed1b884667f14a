#!/usr/bin/env bash
# `make stack`: the compose topology as local processes on a CPU-only machine — the tritonserver
# binary from the nvidia-pytriton wheel (python backend) and the gateway on its Triton backend.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
REPOSITORY=${STACK_REPOSITORY:-.stack/model_repository}
GRPC_PORT=${TRITON_GRPC_PORT:-8001}
HTTP_PORT=${TRITON_HTTP_PORT:-8010}
METRICS_PORT=${TRITON_METRICS_PORT:-8002}

"$BIN/focalserve" triton --model-repository "$REPOSITORY" --work-dir .stack/triton \
    --grpc-port "$GRPC_PORT" --http-port "$HTTP_PORT" --metrics-port "$METRICS_PORT" &
TRITON_PID=$!
trap 'kill "$TRITON_PID" 2>/dev/null || true; wait "$TRITON_PID" 2>/dev/null || true' EXIT INT TERM

# the gateway waits (bounded) for Triton to be ready, then reads the model configs from it
FOCALSERVE_BACKEND=triton FOCALSERVE_TRITON_URL="127.0.0.1:$GRPC_PORT" \
    "$BIN/focalserve" serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --model-repository "$REPOSITORY"
