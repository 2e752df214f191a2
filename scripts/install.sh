#!/usr/bin/env bash
# Install prdit (editable) into the current Python environment.
#   bash scripts/install.sh          runtime dependencies
#   bash scripts/install.sh --dev    + test dependencies
# torch is installed only when missing, so a GPU machine keeps its own CUDA build. Without an NVIDIA GPU
# we install the CPU wheel (torch==2.13.0) first: an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "[install] torch missing; NVIDIA GPU found: installing the default (CUDA) build of torch"
    "$PYTHON" -m pip install --quiet "torch>=2.4"
  else
    echo "[install] torch missing; no NVIDIA GPU: installing the CPU build torch==2.13.0"
    "$PYTHON" -m pip install --quiet "torch==2.13.0" || \
      "$PYTHON" -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".${extras}"
"$PYTHON" -c "import prdit, torch; print(f'[install] prdit {prdit.__version__} with torch {torch.__version__}')"
