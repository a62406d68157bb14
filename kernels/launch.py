"""Launcher helpers shared by the Triton kernels: where a kernel may run.

Kernels run on CUDA tensors; under Triton's interpreter (`TRITON_INTERPRET=1`, CPU only, slow)
they also accept CPU tensors, which lets the kernel tests run on a machine without a GPU.
Imports only torch.
"""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_device(name: str, *tensors: torch.Tensor) -> None:
    """ValueError unless every tensor is on CUDA (or on the CPU under the interpreter)."""
    ok = all(t.is_cuda for t in tensors)
    if not ok and interpreting():
        ok = all(t.device.type == "cpu" for t in tensors)
    if not ok:
        raise ValueError(f"{name} runs on CUDA tensors (CPU only under TRITON_INTERPRET=1)")
