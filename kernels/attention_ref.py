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


def tree_visibility(parents: Tensor) -> Tensor:
    """parents [n] (parents[t] in [-1, t)) -> bool [n, n]: token t sees token i when i is t or
    one of its ancestors (a draft tree's attention mask among its new tokens)."""
    n = parents.shape[0]
    seen = torch.eye(n, dtype=torch.bool, device=parents.device)
    for t, p in enumerate(parents.tolist()):
        if p >= 0:
            seen[t] |= seen[p]
    return seen


def _attend_one(q: Tensor, k: Tensor, v: Tensor, prefix: int, scale: float,
                parents: Tensor | None = None) -> Tensor:
    """Causal GQA attention for one sequence in float32.

    q [n, Hq, D] new tokens at positions prefix..prefix+n-1; k, v [L, Hkv, D], L = prefix + n.
    parents [n] (a draft tree): new token t sees the prefix and its ancestors only.
    """
    n, hq = q.shape[0], q.shape[1]
    rep = hq // k.shape[1]
    kf = acc(k).repeat_interleave(rep, dim=1)  # [L, Hq, D]
    vf = acc(v).repeat_interleave(rep, dim=1)
    scores = torch.einsum("qhd,khd->hqk", acc(q), kf) * scale  # [Hq, n, L]
    q_pos = torch.arange(n, device=q.device)[:, None] + prefix
    k_pos = torch.arange(k.shape[0], device=q.device)[None, :]
    hidden = k_pos > q_pos  # [n, L]
    if parents is not None:
        hidden[:, prefix:] = ~tree_visibility(parents)
    scores = scores.masked_fill(hidden, float("-inf"))
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
    tree_parents: Tensor | None = None,
) -> Tensor:
    """q [T, Hq, D] new tokens (cu_seqlens [B+1] over q); seq_lens [B] include the new tokens;
    page_table [B, max_pages]. Query head h uses kv head h // (Hq // Hkv). Returns [T, Hq, D]
    in q.dtype. The new tokens' K/V must already be stored in the cache.
    tree_parents [B, n] (speculative verify of draft trees, n new tokens per sequence): a new
    token sees the prefix and its own ancestors instead of every earlier token.
    """
    out = torch.zeros(q.shape, dtype=acc_dtype(q), device=q.device)
    bounds = cu_seqlens.tolist()
    for b, total in enumerate(seq_lens.tolist()):
        s, e = bounds[b], bounds[b + 1]
        if e == s:
            continue
        locs = kv_locs_ref(page_table[b], 0, total, page_size)  # [L]
        prefix = total - (e - s)
        parents = None if tree_parents is None else tree_parents[b]
        out[s:e] = _attend_one(q[s:e], k_cache[locs], v_cache[locs], prefix, scale, parents)
    return out.to(q.dtype)
