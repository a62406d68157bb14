#!/usr/bin/env bash
# Quickstart: installs qnext (CPU torch) if needed and serves it over gRPC — the embedded tiny
# model on CPU when no --model-path is given. Arguments pass through to `qnext serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qnext >/dev/null || \
    ! python3 -c "import qnext.worker, qnext_grpc.server" 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check torch==2.13.0
  python3 -m pip install -q --disable-pip-version-check -e .
fi
exec qnext serve "$@"
