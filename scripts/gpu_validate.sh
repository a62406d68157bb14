#!/usr/bin/env bash
# Runs on the GPU machine (device tool): installs qnext without dependencies and runs the GPU
# tests plus the CPU model tests there. Results go to $OUT (or ./gpu-out).
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # no install: the checkout imports as qnext
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'
  date -u +%Y-%m-%dT%H:%MZ; } | tee "$out/env.txt"
python3 -m pytest tests/gpu tests/models/test_parity.py -v -p no:cacheprovider 2>&1 | tee "$out/pytest.txt"
