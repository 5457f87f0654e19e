#!/usr/bin/env bash
# Set everything up on a fresh machine and run the main job on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
monet-interp demo "$@"
