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
# pip's own failure must stop the script (pipefail); only grep's "no lines left" is ignored.
pip_install() { python -m pip install -q "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }
pip_install --upgrade pip
pip_install "torch==2.13.0"
pip_install -e ".[dev]"
python -c "import torch, monet_interp; print('monet-interp', monet_interp.__version__, 'torch', torch.__version__)"
