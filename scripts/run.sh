#!/usr/bin/env bash
# Quickstart: installs qnext (CPU torch) if needed and runs it on the embedded tiny model when no
# --model-path is given. Until the gRPC front end lands (`qnext serve`), this runs `qnext generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qnext >/dev/null || ! python3 -c "import qnext.worker" 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check torch==2.13.0
  python3 -m pip install -q --disable-pip-version-check -e .
fi
exec qnext generate "$@"
