"""ForwardBatch: the per-step tensors every layer may read (a leaf module: imports only torch).

One forward runs a flat batch of T new tokens from B sequences; each sequence contributes a
prefill chunk or a single decode token. Legend: T = new tokens, B = sequences, P = max pages
of one sequence. Recurrent state is reached through `state_slots` into the state pool, K/V
through `page_table` / `kv_locs` into the paged KV pool; layers look their pool tensors up by
their own layer index (`kv_layer` / `state_layer`), never by walking modules.
A sequence may also ask for a snapshot: its recurrent state part-way through its new tokens,
copied into an extra state slot (prefix-cache tracking, SGLang's "extra_buffer"). Snapshot
slots are distinct from every working slot of the batch and from each other.
A verify batch (speculative decoding) carries n draft tokens per sequence: attention sees the
prefix and the draft's own ancestors, recurrent layers keep every draft step's state apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class KVCache(Protocol):
    """Paged K/V storage of the full-attention layers: [num_pages * page_size, Hkv, D] each."""

    page_size: int

    def kv(self, kv_layer: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class StateCache(Protocol):
    """Recurrent storage of the Gated DeltaNet layers, indexed by state slot."""

    def conv(self, state_layer: int) -> torch.Tensor:
        """[S, C, K-1]: the last K-1 pre-conv inputs of each slot."""
        ...

    def ssm(self, state_layer: int) -> torch.Tensor:
        """[S, Hv, dk, dv]: the delta-rule state of each slot."""
        ...


class SpecStates(Protocol):
    """Speculative verify: per-draft-step recurrent states of the GDN layers, row b for the
    batch's sequence b ([R, n, ...] per layer, n draft tokens); the pool stays untouched."""

    def conv(self, state_layer: int) -> torch.Tensor:
        """[R, n, C, K-1]: the last K-1 pre-conv inputs after each draft step."""
        ...

    def ssm(self, state_layer: int) -> torch.Tensor:
        """[R, n, Hv, dk, dv]: the delta-rule state after each draft step."""
        ...


@dataclass(frozen=True)
class ForwardBatch:
    """Inputs of one forward; built by `runtime.inputs`, read by layers."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64: absolute position of each new token
    cu_seqlens: torch.Tensor  # [B+1] int64: offsets of each sequence's new tokens in T
    seq_lens: torch.Tensor  # [B] int64: tokens of each sequence including the new ones
    state_slots: torch.Tensor  # [B] int64: state-pool slot of each sequence
    has_initial_state: torch.Tensor  # [B] bool: the slot holds state from earlier tokens
    page_table: torch.Tensor  # [B, P] int64: KV pages of each sequence, in order
    kv_locs: torch.Tensor  # [T] int64: where each new token's K/V is written
    logits_indices: torch.Tensor  # [N] int64: rows of T whose logits are computed
    is_decode: bool  # every sequence has exactly one new token
    kv_cache: KVCache
    state_cache: StateCache
    # both None when no sequence of the batch asks for a snapshot
    snapshot_slots: torch.Tensor | None = None  # [B] int64: snapshot slot, -1 for none
    snapshot_offsets: torch.Tensor | None = None  # [B] int64: new tokens in the snapshot, 0 if none
    # speculative verify: every sequence's new tokens are its n draft tokens (chain, or a tree
    # when spec_parents [B, n] is set); recurrent layers write spec_states, not the pool
    spec_states: SpecStates | None = None
    spec_parents: torch.Tensor | None = None

    @property
    def is_verify(self) -> bool:
        return self.spec_states is not None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_seqs(self) -> int:
        return int(self.cu_seqlens.shape[0]) - 1
