"""Shared helpers for the qnext.kernels reference-kernel unit tests (CPU, seeded)."""

from __future__ import annotations

import inspect

import torch

TOL = 1e-5


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float32."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + lengths).cumsum(0).to(torch.int32)


def hf_fn(name: str):
    from transformers.models.qwen3_next import modeling_qwen3_next as m

    # the torch fallback, even if a kernel package is present
    return inspect.unwrap(getattr(m, name))
