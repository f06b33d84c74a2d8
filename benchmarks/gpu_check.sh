#!/usr/bin/env bash
# One GPU check before renting a cluster (benchmarks/gpu_check.py says what each section proves):
#   bash benchmarks/gpu_check.sh            # one CUDA GPU: under 9 minutes (a 540 s limit)
#   bash benchmarks/gpu_check.sh --tiny     # every shape shrunk, CPU without a GPU (CI runs it)
# Needs python3, a CUDA torch >= 2.8 (pyproject.toml's range) and numpy; no Ray, MLflow, pydantic
# or PyYAML, no network:  pip install "torch>=2.8,<=2.14.1" numpy  (PYTHON=... picks the interpreter).
# Prints one JSON line per section, then `gpu_check: ok` or `gpu_check: failed` (exit 0 / 1).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
timeout "${GPU_CHECK_LIMIT_S:-540}" $PYTHON benchmarks/gpu_check.py "$@"
rc=$?
if [ "$rc" -eq 124 ]; then
  echo "{\"section\": \"limit\", \"ok\": false, \"error\": \"stopped after ${GPU_CHECK_LIMIT_S:-540} s\"}"
fi
if [ "$rc" -eq 0 ]; then echo "gpu_check: ok"; else echo "gpu_check: failed"; fi
exit "$rc"
