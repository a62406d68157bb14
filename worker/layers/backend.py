"""Which implementation a layer calls: the Triton kernels (`kernels/*.py`) for CUDA tensors
when triton is installed, the torch references everywhere else — CPU, environments without
triton, and float64 numerics checks (the kernels compute in float32)."""

from __future__ import annotations

import functools
import importlib.util

import torch


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype != torch.float64 and _has_triton()
