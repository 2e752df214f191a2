#!/usr/bin/env bash
# Install prdit, then optionally run the demo or the tests (the README's two commands):
#   bash scripts/install.sh --demo [demo flags]     install, then `prdit demo`
#   bash scripts/install.sh --test [pytest flags]   install with the test and docs extras, then `pytest -q`
#   bash scripts/install.sh [--dev]                 install only (--dev: with the test and docs extras)
# Works with an externally managed system Python (uses the project's .venv), a virtual or conda environment, and
# keeps a torch that is already installed. The decisions are in scripts/install_plan.py. PYTHON=... picks the Python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "[install] error: $PYTHON not found; install Python >= 3.10 (Debian/Ubuntu: apt-get install python3 python3-venv python3-pip)" >&2
  exit 1
fi
exec "$PYTHON" scripts/install_plan.py "$@"
