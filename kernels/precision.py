"""Accumulation precision of the references: float32 for half/bfloat16/float32 inputs, float64
for float64 inputs (numerics checks run whole models in float64). Imports only torch."""

from __future__ import annotations

import torch


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def acc(x: torch.Tensor) -> torch.Tensor:
    """`x` in its accumulation dtype (a no-op for float32 / float64 tensors)."""
    return x.to(acc_dtype(x))
