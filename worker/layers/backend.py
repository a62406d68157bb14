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
    return kernels_cover(x.device, x.dtype)


def kernels_cover(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether every layer runs its Triton kernel for this device and dtype. Only then is a
    forward free of host syncs (the references sync), so CUDA graphs can capture it."""
    return device.type == "cuda" and dtype != torch.float64 and _has_triton()
