"""Gated full attention over the paged KV pool.

q_proj emits per head [q (D) | gate (D)]; q and k get a per-head zero-centred RMSNorm and partial
RoPE; attention is causal with GQA; the output is multiplied by sigmoid(gate) before o_proj.
Heads are split across ranks (KV heads replicated when tp > num_kv_heads).
On CUDA the attention itself is the Triton kernel `kernels/attention.py` (prefill or split-K
decode, chosen from `ForwardBatch.is_decode` without a device sync).
Legend: T = new tokens, Hq / Hkv = local query / KV heads, D = head dim.
"""

from __future__ import annotations

import torch
from torch import nn

from qnext.kernels import paged_attention_ref, store_kv_ref
from qnext.worker.forward import ForwardBatch
from qnext.worker.layers.backend import use_triton
from qnext.worker.layers.linear import ColumnParallelLinear, KVHeadLinear, RowParallelLinear
from qnext.worker.layers.norm import RMSNorm
from qnext.worker.layers.rotary import RotaryEmbedding


class GatedAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 rotary_dim: int, rope_theta: float, eps: float, kv_layer: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.kv_layer = kv_layer
        self.q_proj = ColumnParallelLinear(hidden_size, num_heads * head_dim * 2)
        self.k_proj = KVHeadLinear(hidden_size, num_kv_heads, head_dim)
        self.v_proj = KVHeadLinear(hidden_size, num_kv_heads, head_dim)
        self.o_proj = RowParallelLinear(num_heads * head_dim, hidden_size)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)
        self.rotary = RotaryEmbedding(rotary_dim, rope_theta)

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        num_tokens = x.shape[0]
        q, gate = self.q_proj(x).view(num_tokens, -1, 2 * self.head_dim).chunk(2, dim=-1)
        q = self.q_norm(q)  # [T, Hq, D]
        k = self.k_norm(self.k_proj(x).view(num_tokens, -1, self.head_dim))  # [T, Hkv, D]
        v = self.v_proj(x).view(num_tokens, -1, self.head_dim)
        q, k = self.rotary(batch.positions, q, k)
        k_cache, v_cache = batch.kv_cache.kv(self.kv_layer)
        store_kv_ref(k_cache, v_cache, batch.kv_locs, k, v)
        out = self._attend(q, k_cache, v_cache, batch)
        out = out.reshape(num_tokens, -1) * torch.sigmoid(gate.reshape(num_tokens, -1))
        return self.o_proj(out)

    def _attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                batch: ForwardBatch) -> torch.Tensor:
        args = dict(cu_seqlens=batch.cu_seqlens, seq_lens=batch.seq_lens,
                    page_table=batch.page_table, page_size=batch.kv_cache.page_size,
                    scale=self.head_dim ** -0.5)
        if batch.spec_parents is not None:  # draft trees: the reference's ancestor mask
            return paged_attention_ref(q, k_cache, v_cache, tree_parents=batch.spec_parents,
                                       **args)
        if use_triton(q):
            from qnext.kernels.attention import paged_attention

            return paged_attention(q, k_cache, v_cache, is_decode=batch.is_decode, **args)
        return paged_attention_ref(q, k_cache, v_cache, **args)
