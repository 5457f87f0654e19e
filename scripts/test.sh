#!/usr/bin/env bash
# Set everything up on a fresh machine and run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_browser.sh   # Debian chromium for the report's real-browser test
. .venv/bin/activate
python -m pytest "$@"
