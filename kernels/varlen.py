"""Varlen helpers shared by the references: walking the sequences of a flat batch and reading a
sequence's initial state from its pool slot. Imports only torch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from qnext.kernels.precision import acc


def iter_seqs(cu_seqlens: Tensor, state_indices: Tensor) -> Iterator[tuple[int, int, int, int]]:
    """Yield (b, slot, start, end) for every non-empty sequence of the batch."""
    bounds = cu_seqlens.tolist()
    for b, slot in enumerate(state_indices.tolist()):
        if bounds[b + 1] > bounds[b]:
            yield b, slot, bounds[b], bounds[b + 1]


def initial_state(states: Tensor, slot: int, has_initial: bool, dtype: torch.dtype) -> Tensor:
    """states[slot] in accumulation precision, or zeros when the sequence starts fresh."""
    if has_initial:
        return acc(states[slot]).to(dtype)
    return torch.zeros(states.shape[1:], dtype=dtype, device=states.device)
