"""Varlen helpers shared by the references: walking the sequences of a flat batch, reading a
sequence's initial state from its pool slot, and the snapshot slots of prefix-cache tracking.
Imports only torch."""

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


def snapshot_targets(cu_seqlens: Tensor, snapshot_slots: Tensor | None,
                     snapshot_offsets: Tensor | None, align: int = 1) -> dict[int, tuple[int, int]]:
    """{b: (slot, t)} for each sequence b with snapshot_slots[b] >= 0: its state after its
    first t new tokens goes to `slot`. Checks, before any state is written, that 1 <= t <= L_b
    and that t is a multiple of `align` or L_b itself (ValueError otherwise).

    snapshot_slots, snapshot_offsets [B] int; None (no snapshots) gives {}.
    """
    if snapshot_slots is None:
        return {}
    if snapshot_offsets is None:
        raise ValueError("snapshot_slots needs snapshot_offsets")
    bounds = cu_seqlens.tolist()
    targets = {}
    for b, (slot, t) in enumerate(zip(snapshot_slots.tolist(), snapshot_offsets.tolist())):
        if slot < 0:
            continue
        length = bounds[b + 1] - bounds[b]
        if not 1 <= t <= length:
            raise ValueError(f"sequence {b}: snapshot offset {t} outside 1..{length}")
        if t % align and t != length:
            raise ValueError(f"sequence {b}: snapshot offset {t} is neither a multiple of "
                             f"{align} nor the sequence length {length}")
        targets[b] = (slot, t)
    return targets


def write_decode_snapshots(states: Tensor, new_states: Tensor,
                           snapshot_slots: Tensor | None) -> None:
    """Decode: states[snapshot_slots[b]] <- new_states[b] wherever snapshot_slots[b] >= 0.

    states [S, ...]; new_states [B, ...] (the updated states); snapshot_slots [B] or None.
    """
    if snapshot_slots is None:
        return
    wanted = snapshot_slots >= 0
    states[snapshot_slots[wanted]] = new_states[wanted].to(states.dtype)


def snapshot_pointers(snapshot_slots: Tensor | None, snapshot_offsets: Tensor | None,
                      state_indices: Tensor) -> tuple[Tensor, Tensor]:
    """The (slots, offsets) tensors a prefill launcher passes for snapshots: the given ones,
    or, without snapshots, state_indices as a stand-in the kernel never reads (HAS_SNAP off)."""
    if snapshot_slots is None:
        return state_indices, state_indices
    return snapshot_slots, snapshot_offsets
