#!/usr/bin/env bash
# Install headless Chromium (Debian package "chromium") for the browser test of the expert report
# (tests/test_report_browser.py), unless a Chromium/Chrome is already on PATH. Idempotent and quiet.
# Fonts are installed too so that screenshots show readable text. Needs root or sudo.
set -euo pipefail
for name in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "browser: $(command -v "$name")"
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: no apt-get here; install Chromium by hand (or set MONET_CHROMIUM=/path/to/chrome)" >&2
  exit 1
fi
SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install_browser.sh: need root or sudo to apt-get install chromium" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation fonts-dejavu-core >/dev/null
echo "browser: $(command -v chromium)"
