#!/usr/bin/env bash
# Create .venv with a CPU build of torch and wmtp (editable, with dev tools). Idempotent.
#   TORCH_SPEC      torch requirement to install first (default torch==2.13.0, a CPU build where
#                   pip's find-links has it; elsewhere set TORCH_INDEX_URL to the CPU wheel index)
#   TORCH_INDEX_URL optional extra index for torch (e.g. https://download.pytorch.org/whl/cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  # torch first and alone, so no other requirement can pull a multi-GB CUDA build.
  pip install -q ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "${TORCH_SPEC:-torch==2.13.0}"
fi
pip install -q -e '.[dev]'
python -c "import torch, wmtp; print(f'wmtp ready: torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
