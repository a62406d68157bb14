"""Gated full attention over the paged KV pool.

q_proj emits per head [q (D) | gate (D)]; q_proj, k_proj and v_proj load into one weight (one
GEMM, `QKVProj`: rows [q | gate of this rank's heads, k, v]). q and k get a per-head
zero-centred RMSNorm and partial RoPE (whose kernel also writes k, v into the paged cache);
attention is causal with GQA; the output is multiplied by sigmoid(gate) before o_proj.
Heads are split across ranks (KV heads replicated when tp > num_kv_heads).
On CUDA the attention itself is the Triton kernel `kernels/attention.py` (prefill or split-K
decode, chosen from `ForwardBatch.is_decode` without a device sync), which also applies the
gate as it writes its output.
Legend: T = new tokens, Hq / Hkv = local query / KV heads, D = head dim.
"""

from __future__ import annotations

import torch
from torch import nn

from qnext.kernels import paged_attention_ref
from qnext.worker.forward import ForwardBatch
from qnext.worker.layers.backend import use_triton
from qnext.worker.layers.linear import (RowParallelLinear, copy_checked, dense, kv_head_range,
                                        set_loader)
from qnext.worker.layers.norm import RMSNorm
from qnext.worker.layers.parallel import get_tp_info, shard_range
from qnext.worker.layers.rotary import RotaryEmbedding


class QKVProj(nn.Module):
    """q_proj (split by query heads), k_proj and v_proj (split by KV heads, replicated when
    tp > Hkv) of one rank as one weight: three GEMMs' launches become one."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int,
                 head_dim: int) -> None:
        super().__init__()
        tp = get_tp_info()
        self.q_rows = shard_range(num_heads * head_dim * 2, tp.rank, tp.size)
        first, last = kv_head_range(num_kv_heads, tp.rank, tp.size)
        self.kv_rows = (first * head_dim, last * head_dim)
        kv = self.kv_rows[1] - self.kv_rows[0]
        self.sizes = (self.q_rows[1] - self.q_rows[0], kv, kv)
        self.weight = set_loader(nn.Parameter(torch.empty(sum(self.sizes), hidden_size)),
                                 self._load, num_loads=3)

    def _load(self, param: nn.Parameter, tensor: torch.Tensor, part: str) -> None:
        """`part` "q", "k" or "v": that projection's full checkpoint tensor."""
        first, last = self.q_rows if part == "q" else self.kv_rows
        at = {"q": 0, "k": self.sizes[0], "v": self.sizes[0] + self.sizes[1]}[part]
        copy_checked(param[at:at + last - first], tensor[first:last])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """([T, q|gate], [T, k], [T, v]): column views of one output."""
        return dense(x, self.weight).split(self.sizes, dim=-1)


class GatedAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 rotary_dim: int, rope_theta: float, eps: float, kv_layer: int,
                 reduce_results: bool = True) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.kv_layer = kv_layer
        self.qkv_proj = QKVProj(hidden_size, num_heads, num_kv_heads, head_dim)
        self.o_proj = RowParallelLinear(num_heads * head_dim, hidden_size, reduce_results)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)
        self.rotary = RotaryEmbedding(rotary_dim, rope_theta)

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        num_tokens = x.shape[0]
        q_gate, k, v = self.qkv_proj(x)
        q, gate = q_gate.view(num_tokens, -1, 2 * self.head_dim).chunk(2, dim=-1)
        k = k.view(num_tokens, -1, self.head_dim)  # [T, Hkv, D]
        v = v.view(num_tokens, -1, self.head_dim)
        k_cache, v_cache = batch.kv_cache.kv(self.kv_layer)
        store = (k_cache, v_cache, batch.kv_locs, v)
        if use_triton(q):  # the q / k norms, the rotation and the cache store: one launch
            norms = (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps)
            q, k = self.rotary(batch.positions, q, k, kv_store=store, norms=norms)
        else:
            q, k = self.rotary(batch.positions, self.q_norm(q), self.k_norm(k), kv_store=store)
        out = self._attend(q, k_cache, v_cache, batch, gate)  # [T, Hq, D], gated
        return self.o_proj(out.reshape(num_tokens, -1))

    def _attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                batch: ForwardBatch, gate: torch.Tensor) -> torch.Tensor:
        """attention * sigmoid(gate) (gate: a [T, Hq, D] view of the projection); the Triton
        kernel applies the gate as it writes its output."""
        args = dict(cu_seqlens=batch.cu_seqlens, seq_lens=batch.seq_lens,
                    page_table=batch.page_table, page_size=batch.kv_cache.page_size,
                    scale=self.head_dim ** -0.5)
        if batch.spec_parents is not None:  # draft trees: the reference's ancestor mask
            out = paged_attention_ref(q, k_cache, v_cache, tree_parents=batch.spec_parents,
                                      **args)
        elif use_triton(q):
            from qnext.kernels.attention import paged_attention

            return paged_attention(q, k_cache, v_cache, is_decode=batch.is_decode, gate=gate,
                                   **args)
        else:
            out = paged_attention_ref(q, k_cache, v_cache, **args)
        return out.view(gate.shape) * torch.sigmoid(gate)
