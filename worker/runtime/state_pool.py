"""Recurrent-state storage for the Gated DeltaNet layers of one rank, indexed by state slot.

conv: [L, S, C_local, K-1] in the model dtype (the last K-1 pre-conv inputs); ssm:
[L, S, Hv_local, dk, dv] in `--mamba-ssm-dtype` (float32 by default). Slot 0 is a dummy target
for padded entries and is never handed out. Fresh slots must be zeroed (`zero`) or carry a
copied state (`copy`, for copy-on-write of a cached prefix) before a forward reads them.
Speculative verify (a later issue) never writes these slots directly: it keeps per-step
intermediates and commits the accepted step, since recurrent state cannot be rolled back.
"""

from __future__ import annotations

import torch

from qnext.worker.runtime.transfer import to_device_many


class StatePool:
    def __init__(self, num_layers: int, num_slots: int, conv_channels: int, conv_kernel: int,
                 num_v_heads: int, head_k_dim: int, head_v_dim: int, conv_dtype: torch.dtype,
                 ssm_dtype: torch.dtype, device: torch.device | str) -> None:
        self.num_slots = num_slots
        self.conv_states = torch.zeros((num_layers, num_slots, conv_channels, conv_kernel - 1),
                                       dtype=conv_dtype, device=device)
        self.ssm_states = torch.zeros((num_layers, num_slots, num_v_heads, head_k_dim, head_v_dim),
                                      dtype=ssm_dtype, device=device)

    def conv(self, state_layer: int) -> torch.Tensor:
        return self.conv_states[state_layer]

    def ssm(self, state_layer: int) -> torch.Tensor:
        return self.ssm_states[state_layer]

    def zero(self, slots: torch.Tensor) -> None:
        """Reset the given slots in every layer (on the current stream). index_fill_, not
        `x[:, slots] = 0`: that assignment uploads the scalar from pageable memory, a host
        sync at every admission (seen on the GPU by profile_decode_host's sync probe)."""
        self.conv_states.index_fill_(1, slots, 0)
        self.ssm_states.index_fill_(1, slots, 0)

    def copy(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """dst[i] <- src[i] in every layer (copy-on-write of a cached state)."""
        self.conv_states.index_copy_(1, dst, self.conv_states.index_select(1, src))
        self.ssm_states.index_copy_(1, dst, self.ssm_states.index_select(1, src))

    def copy_pairs(self, pairs: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> None:
        """Apply (src, dst) copies as if one after another, batching runs in which no source
        is an earlier destination (a chunk snapshot may be copied on by a cache hit)."""
        start = 0
        while start < len(pairs):
            end, written = start, set()
            while end < len(pairs) and pairs[end][0] not in written:
                written.add(pairs[end][1])
                end += 1
            src, dst = zip(*pairs[start:end])
            device = self.ssm_states.device
            self.copy(*to_device_many([src, dst], device))
            start = end

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv_states, self.ssm_states))

    @property
    def bytes_per_slot(self) -> int:
        return self.bytes // self.num_slots
