#!/usr/bin/env bash
# Downloads (here, where PyPI is reachable) the pure-Python wheels the GPU image lacks into .whl/
# (git-ignored via .git/info/exclude); pass `carry: [".whl"]` to the device call.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 -d .whl structlog==26.1.0
# `qnext serve` on the GPU machine (scripts/bench_serve.py): the image's grpcio and protobuf
# are older than the checked-in stubs need, and it has no health / reflection services.
# protobuf must be the binary wheel (tagged manylinux2014): the pure-Python one imports the
# image's older compiled `google._upb` and fails (FrozenInstanceError, seen on the GPU machine)
rm -f .whl/serve/protobuf-*-py3-none-any.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl/serve grpcio==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 \
  protobuf==7.35.1
# the kernel benchmarks' anchor, kept apart: on the path, transformers would use its kernels
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl/anchor \
  fla-core==0.6.0 flash-linear-attention==0.6.0 einops
