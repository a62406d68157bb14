"""Paged-KV causal attention references (store + attend); imports only torch.

Legend: T = new tokens in the flat batch, B = sequences, N = token slots in the KV pool,
Hq/Hkv = query/kv heads, D = head dim, P = page size. A kv_loc is a flat token slot:
kv_loc = page_id * P + offset, so position pos of sequence b lives at
page_table[b, pos // P] * P + pos % P.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qnext.kernels.precision import acc, acc_dtype


def store_kv_ref(k_cache: Tensor, v_cache: Tensor, kv_locs: Tensor, k: Tensor, v: Tensor) -> None:
    """Write k, v [T, Hkv, D] into k_cache, v_cache [N, Hkv, D] at kv_locs int64 [T], in place."""
    k_cache[kv_locs] = k.to(k_cache.dtype)
    v_cache[kv_locs] = v.to(v_cache.dtype)


def kv_locs_ref(page_table_row: Tensor, start: int, end: int, page_size: int) -> Tensor:
    """kv_locs int64 [end - start] of positions [start, end) of one sequence's page table row."""
    pos = torch.arange(start, end, device=page_table_row.device, dtype=torch.int64)
    pages = page_table_row.to(torch.int64)[pos // page_size]
    return pages * page_size + pos % page_size


def _attend_one(q: Tensor, k: Tensor, v: Tensor, prefix: int, scale: float) -> Tensor:
    """Causal GQA attention for one sequence in float32.

    q [n, Hq, D] new tokens at positions prefix..prefix+n-1; k, v [L, Hkv, D], L = prefix + n.
    """
    n, hq = q.shape[0], q.shape[1]
    rep = hq // k.shape[1]
    kf = acc(k).repeat_interleave(rep, dim=1)  # [L, Hq, D]
    vf = acc(v).repeat_interleave(rep, dim=1)
    scores = torch.einsum("qhd,khd->hqk", acc(q), kf) * scale  # [Hq, n, L]
    q_pos = torch.arange(n, device=q.device)[:, None] + prefix
    k_pos = torch.arange(k.shape[0], device=q.device)[None, :]
    scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, vf)  # [n, Hq, D]


def paged_attention_ref(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    *,
    cu_seqlens: Tensor,
    seq_lens: Tensor,
    page_table: Tensor,
    page_size: int,
    scale: float,
) -> Tensor:
    """q [T, Hq, D] new tokens (cu_seqlens [B+1] over q); seq_lens [B] include the new tokens;
    page_table [B, max_pages]. Query head h uses kv head h // (Hq // Hkv). Returns [T, Hq, D]
    in q.dtype. The new tokens' K/V must already be stored in the cache.
    """
    out = torch.zeros(q.shape, dtype=acc_dtype(q), device=q.device)
    bounds = cu_seqlens.tolist()
    for b, total in enumerate(seq_lens.tolist()):
        s, e = bounds[b], bounds[b + 1]
        if e == s:
            continue
        locs = kv_locs_ref(page_table[b], 0, total, page_size)  # [L]
        prefix = total - (e - s)
        out[s:e] = _attend_one(q[s:e], k_cache[locs], v_cache[locs], prefix, scale)
    return out.to(q.dtype)
