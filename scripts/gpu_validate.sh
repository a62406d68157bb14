#!/usr/bin/env bash
# Runs on the GPU machine (device tool) without installing: the checkout imports as qnext through
# PYTHONPATH; wheels the GPU image lacks come from .whl/ (scripts/fetch_gpu_wheels.sh, carried).
# Runs the GPU tests, the parity tests and the engine tests there. Results go to $OUT.
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
# wheels the GPU image lacks (structlog), carried in .whl/ (see the device README)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # no install: the checkout imports as qnext
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'
  date -u +%Y-%m-%dT%H:%MZ; } | tee "$out/env.txt"
# arguments: the tests to run (default: the GPU tests, parity and the engine tests)
tests=("$@"); [ ${#tests[@]} -gt 0 ] || tests=(tests/gpu tests/models/test_parity.py tests/engine)
python3 -m pytest "${tests[@]}" -v -s -p no:cacheprovider 2>&1 | tee "$out/pytest.txt"
