#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs the toolkit's requirements into it. Safe to re-run.
# GPU users: set PSPNET_TF_PACKAGE='tensorflow[and-cuda]==2.21.0' to install the CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ -n "${PSPNET_TF_PACKAGE:-}" ]; then
  grep -v '^tensorflow-cpu' requirements.txt > .venv/requirements-gpu.txt
  python -m pip install -q "$PSPNET_TF_PACKAGE" -r .venv/requirements-gpu.txt pytest
else
  python -m pip install -q -r requirements-dev.txt
fi
# Compile protos/*.proto once now (importing the package does it when needed anyway).
python -c "import protos"
