#!/usr/bin/env bash
# Create .venv (if missing) and install monet-interp with its dev extras.
# torch==2.13.0 is installed first and explicitly, so that no multi-GB CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
python -m pip install -q "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
python -m pip install -q -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
python -c "import torch, monet_interp; print('monet-interp', monet_interp.__version__, 'torch', torch.__version__)"
