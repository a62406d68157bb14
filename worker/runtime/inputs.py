"""Turns a step's plain-int description of each sequence into a `ForwardBatch` of tensors.

A `SeqChunk` is what the scheduler decides for one sequence in one step: its new token ids
(a prefill chunk or one decode token), how many of its tokens are already in the caches, its
state slot and its KV pages (covering at least prefix + new tokens), and optionally a snapshot
slot that receives the recurrent state part-way through the new tokens (prefix-cache tracking).
`build_verify_batch` makes the speculative verify forward of draft chains or trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import accumulate

import torch

from qnext.worker.forward import ForwardBatch, KVCache, SpecStates, StateCache
from qnext.worker.runtime.transfer import padded_rows, to_device_many


@dataclass(frozen=True)
class SeqChunk:
    """snapshot_slot / snapshot_len: after the step, slot `snapshot_slot` also holds the
    recurrent state after the sequence's first `snapshot_len` tokens (absolute count,
    prefix_len < snapshot_len <= seq_len). A snapshot slot differs from every working slot and
    every other snapshot slot of the step; the prefill kernels take the state only at chunk
    boundaries (see `chunk_gated_delta_rule_ref`)."""

    token_ids: list[int]
    prefix_len: int
    state_slot: int
    page_ids: Sequence[int]
    snapshot_slot: int | None = None
    snapshot_len: int = 0

    @property
    def seq_len(self) -> int:
        return self.prefix_len + len(self.token_ids)


def _check(chunk: SeqChunk, page_size: int) -> None:
    if not chunk.token_ids:
        raise ValueError("a sequence chunk needs at least one new token")
    if len(chunk.page_ids) * page_size < chunk.seq_len:
        raise ValueError(f"{len(chunk.page_ids)} pages of {page_size} cannot hold "
                         f"{chunk.seq_len} tokens")
    if chunk.snapshot_slot is None:
        if chunk.snapshot_len:
            raise ValueError("snapshot_len is set but snapshot_slot is None")
    elif chunk.snapshot_slot < 0:
        raise ValueError(f"snapshot_slot {chunk.snapshot_slot} is negative")
    elif not chunk.prefix_len < chunk.snapshot_len <= chunk.seq_len:
        raise ValueError(f"snapshot_len {chunk.snapshot_len} must lie in this step's new tokens: "
                         f"prefix_len {chunk.prefix_len} < snapshot_len <= {chunk.seq_len}")


def _snapshots(chunks: list[SeqChunk]) -> tuple[list[int], list[int]] | None:
    """Per-sequence (snapshot slot or -1, new tokens before the snapshot or 0); None if unused."""
    wanted = [c.snapshot_slot for c in chunks if c.snapshot_slot is not None]
    if not wanted:
        return None
    if len(set(wanted)) < len(wanted) or set(wanted) & {c.state_slot for c in chunks}:
        raise ValueError(f"snapshot slots {wanted} must differ from each other and from the "
                         f"working state slots")
    return ([-1 if c.snapshot_slot is None else c.snapshot_slot for c in chunks],
            [0 if c.snapshot_slot is None else c.snapshot_len - c.prefix_len for c in chunks])


def _kv_locs(chunk: SeqChunk, page_size: int) -> list[int]:
    return [chunk.page_ids[p // page_size] * page_size + p % page_size
            for p in range(chunk.prefix_len, chunk.seq_len)]


def build_forward_batch(chunks: list[SeqChunk], kv_cache: KVCache, state_cache: StateCache,
                        device: torch.device | str, all_logits: bool = False,
                        page_table: torch.Tensor | None = None) -> ForwardBatch:
    """Logits are requested for the last new token of every sequence (every token if
    `all_logits`, as prompt logprobs and parity checks need). `page_table` [B, >= max pages]
    on the device (runtime/page_table.py) replaces the one built from the chunks' page ids."""
    page_size = kv_cache.page_size
    for chunk in chunks:
        _check(chunk, page_size)
    cu = [0, *accumulate(len(c.token_ids) for c in chunks)]
    max_pages = max(len(c.page_ids) for c in chunks)
    snapshots = _snapshots(chunks) or ([], [])
    table = [] if page_table is not None else padded_rows([c.page_ids for c in chunks],
                                                         max_pages)
    (input_ids, positions, cu_seqlens, seq_lens, state_slots, has_initial, host_table, kv_locs,
     logits_indices, snapshot_slots, snapshot_offsets) = to_device_many([
        [t for c in chunks for t in c.token_ids],
        [p for c in chunks for p in range(c.prefix_len, c.seq_len)],
        cu,
        [c.seq_len for c in chunks],
        [c.state_slot for c in chunks],
        [int(c.prefix_len > 0) for c in chunks],
        table,
        [loc for c in chunks for loc in _kv_locs(c, page_size)],
        list(range(cu[-1])) if all_logits else [e - 1 for e in cu[1:]],
        *snapshots], device)
    if page_table is None:
        page_table = host_table.view(len(chunks), max_pages)
    return ForwardBatch(
        input_ids=input_ids, positions=positions, cu_seqlens=cu_seqlens, seq_lens=seq_lens,
        state_slots=state_slots, has_initial_state=has_initial.bool(),
        page_table=page_table[:, :max_pages], kv_locs=kv_locs,
        logits_indices=logits_indices,
        is_decode=all(len(c.token_ids) == 1 and c.prefix_len > 0 for c in chunks),
        kv_cache=kv_cache, state_cache=state_cache,
        snapshot_slots=snapshot_slots if snapshot_slots.numel() else None,
        snapshot_offsets=snapshot_offsets if snapshot_slots.numel() else None)


def draft_depths(parents: list[int]) -> list[int]:
    """Depth of each draft token in its tree (root 0); parents[t] in [-1, t)."""
    depths: list[int] = []
    for t, p in enumerate(parents):
        if not -1 <= p < t:
            raise ValueError(f"draft parent {p} of token {t} must lie in [-1, {t})")
        depths.append(0 if p < 0 else depths[p] + 1)
    return depths


def build_verify_batch(chunks: list[SeqChunk], kv_cache: KVCache, state_cache: StateCache,
                       spec_states: SpecStates, device: torch.device | str,
                       parents: list[list[int]] | None = None,
                       page_table: torch.Tensor | None = None) -> ForwardBatch:
    """A speculative verify forward: each chunk's new tokens are its n draft tokens (the same
    n for every sequence), K/V stored at the n positions after the prefix, RoPE positions by
    depth in the draft (a chain's depth is its index); logits for every draft token.
    parents [B][n] make the drafts trees (None: chains)."""
    n = len(chunks[0].token_ids)
    if any(len(c.token_ids) != n or c.snapshot_slot is not None for c in chunks):
        raise ValueError("a verify batch has the same number of draft tokens per sequence "
                         "and no snapshots")
    batch = build_forward_batch(chunks, kv_cache, state_cache, device, all_logits=True,
                                page_table=page_table)
    if parents is None:  # a chain's depth is its index: the positions are already right
        return replace(batch, is_decode=False, spec_states=spec_states)
    positions = [c.prefix_len + d for c, tree in zip(chunks, parents)
                 for d in draft_depths(tree)]
    positions, flat_parents = to_device_many([positions, [p for row in parents for p in row]],
                                             device)
    return replace(batch, positions=positions, is_decode=False, spec_states=spec_states,
                   spec_parents=flat_parents.view(len(chunks), n))
