"""Partial NeoX rotary embedding: only the first `rotary_dim` dims of each head rotate.
On CUDA the Triton kernel `kernels/rope.py` rotates q and k in place; the torch references
elsewhere (`layers/backend.py`). Legend: T = tokens, H = heads, D = head dim."""

from __future__ import annotations

import torch
from torch import nn

from qnext.kernels import apply_rope_ref, rope_cos_sin_ref, store_kv_ref
from qnext.worker.layers.backend import use_triton


class RotaryEmbedding(nn.Module):
    def __init__(self, rotary_dim: int, theta: float) -> None:
        super().__init__()
        self.rotary_dim = rotary_dim
        self.theta = theta

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                kv_store: tuple | None = None,
                norms: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, Hq, D], k [T, Hkv, D] -> rotated q, k. NOTE: on CUDA they are rotated in
        place (the attention layer passes its fresh q / k norm outputs); use the results.
        kv_store (k_cache, v_cache, kv_locs, v): also write the rotated k and v into the
        paged cache (on CUDA in the same launch). norms (q_weight, k_weight, eps), CUDA only:
        normalise each head of q and k first, in the same launch (q, k untouched)."""
        if use_triton(q):
            from qnext.kernels.rope import apply_rope

            return apply_rope(q, k, positions, rotary_dim=self.rotary_dim, theta=self.theta,
                              kv_store=kv_store, norms=norms)
        if norms is not None:
            raise ValueError("fused q / k norms need the Triton kernel (CUDA)")
        cos, sin = rope_cos_sin_ref(positions, self.rotary_dim, self.theta, q.dtype)
        q, k = apply_rope_ref(q, cos, sin), apply_rope_ref(k, cos, sin)
        if kv_store is not None:
            k_cache, v_cache, kv_locs, v = kv_store
            store_kv_ref(k_cache, v_cache, kv_locs, k, v)
        return q, k
