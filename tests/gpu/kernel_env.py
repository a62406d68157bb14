"""Where the Triton kernel tests run: the CUDA GPU, or the CPU under Triton's interpreter.

`TRITON_INTERPRET=1 pytest tests/gpu/test_gpu_<kernel>.py` (triton installed, no GPU needed)
runs a kernel test on CPU tensors — slow, for developing kernels; the GPU run is what counts.
"""

from __future__ import annotations

import pytest
import torch

from qnext.kernels.launch import interpreting

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
KERNEL_MARKS = [pytest.mark.gpu,
                pytest.mark.skipif(not ON_GPU and not interpreting(),
                                   reason="needs a CUDA GPU (or TRITON_INTERPRET=1)")]


def generator(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def poison() -> None:
    """Fill-and-free NaN blocks in both allocator pools, so torch.empty hands back NaN bytes."""
    big = torch.full((1 << 22,), float("nan"), device=DEVICE)
    small = [torch.full((1 << 16,), float("nan"), device=DEVICE) for _ in range(16)]
    del big, small
