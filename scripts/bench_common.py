"""What the kernel benchmarks share: the HBM copy bandwidth measured in the same run (the
floors' denominator) and the relative difference used to check outputs before timing."""

from __future__ import annotations

import torch
import triton.testing


def copy_gbps() -> float:
    """GB/s of a 1 GiB device-to-device copy, read + write counted (median of do_bench)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=200)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float32."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()
