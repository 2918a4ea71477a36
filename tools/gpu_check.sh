#!/usr/bin/env bash
# `make gpu-check`: build for this machine's GPU, CUDA tests, compute-sanitizer, GPU benchmarks.
# Needs an NVIDIA GPU and torch installed for $PYTHON (default python3); no network. See tools/gpu_check.py
# (or --help) for the steps and options; --dry-run prints the plan without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu-check: no Python interpreter '$PY' (set PYTHON)" >&2
    exit 3
fi
export PYTHON="$PY"
exec "$PY" tools/gpu_check.py "$@"
