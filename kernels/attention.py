"""Paged causal GQA attention over the KV pool (Triton): the launcher `paged_attention`.

It picks the decode kernel (`attention_decode.py`, split-K over the context) when every
sequence has exactly one new token, the varlen prefill kernel (`attention_prefill.py`,
causal with a cached prefix, split over the keys when its grid is small) otherwise; the
prefill kernel is correct for any batch, decode rows included.

Reference: `paged_attention_ref` (kernels/attention_ref.py), same contract. Float32
accumulation; float32 operands use IEEE products (no TF32).
Legend: T = new tokens, B = sequences, N = pool rows, Hq / Hkv = query / KV heads,
D = head dim, P = page size.
"""

from __future__ import annotations

import torch

from qnext.kernels.attention_decode import decode, default_splits
from qnext.kernels.attention_prefill import prefill
from qnext.kernels.launch import check_device

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_INTS = (torch.int32, torch.int64)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
                    cu_seqlens: torch.Tensor, seq_lens: torch.Tensor, page_table: torch.Tensor,
                    page_size: int, scale: float, is_decode: bool | None = None,
                    max_seqlen: int | None = None, num_splits: int | None = None,
                    out: torch.Tensor | None = None,
                    gate: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of the new tokens over their sequences' paged K/V.

    q [T, Hq, D] (fp16 / bf16 / fp32, last dim contiguous): the new tokens of B sequences,
    sequence b owning rows cu_seqlens[b]:cu_seqlens[b+1] (cu_seqlens int32/int64 [B+1]; a
    sequence may have none). seq_lens int [B]: tokens of each sequence, new ones included;
    the new tokens sit at the last positions. k_cache, v_cache [N, Hkv, D] (q's dtype, same
    strides, last dim contiguous), Hq a multiple of Hkv, D <= 256: position pos of sequence b
    lives at row page_table[b, pos // P] * P + pos % P (page_table int [B, max_pages], any
    P >= 1). The new tokens' K/V must already be stored. Query head h reads KV head
    h // (Hq / Hkv). Returns [T, Hq, D] in q.dtype (written into `out` when given: q's
    shape and dtype, last dim contiguous, e.g. a static buffer). With `gate` (q's shape and
    dtype, last dim contiguous; a view of a projection's columns is fine) the result is
    attention * sigmoid(gate), applied in float32 before the one rounding (the gated
    attention of Qwen3-Next).

    Host hints, so that the launch needs no device->host copy:
    - is_decode: True when every sequence has exactly one new token (then T == B); False
      takes the prefill kernel, always correct. None: False unless T == B, in which case
      cu_seqlens is read on the host (a sync).
    - max_seqlen: an upper bound of seq_lens, sizes the decode splits; default
      page_table.shape[1] * page_size. num_splits overrides the split count of decode, and
      of the prefill kernel's key splits (`attention_prefill.prefill_splits`: only when its
      tiles leave SMs idle).
    """
    _check(q, k_cache, v_cache, cu_seqlens, seq_lens, page_table, page_size)
    _check_like_q("gate", gate, q)
    T, B = q.shape[0], seq_lens.shape[0]
    if is_decode and T != B:
        raise ValueError(f"is_decode needs one new token per sequence, got T={T}, B={B}")
    _check_like_q("out", out, q)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if T == 0:
        return out
    if is_decode is None:
        is_decode = T == B and bool((cu_seqlens.diff() == 1).all())
    if not is_decode:
        prefill(q, k_cache, v_cache, out, cu_seqlens, seq_lens, page_table, page_size, scale,
                gate, num_splits)
        return out
    if num_splits is None:
        bound = page_table.shape[1] * page_size if max_seqlen is None else max_seqlen
        num_splits = default_splits(q, B, k_cache.shape[1], bound)
    decode(q, k_cache, v_cache, out, seq_lens, page_table, page_size, scale, num_splits, gate)
    return out


def _check_like_q(name: str, t: torch.Tensor | None, q: torch.Tensor) -> None:
    """An optional [T, Hq, D] operand: q's shape and dtype, contiguous in its last dim."""
    if t is None:
        return
    if t.shape != q.shape or t.dtype != q.dtype or t.stride(2) != 1:
        raise ValueError(f"{name} {tuple(t.shape)} {t.dtype} must match q {tuple(q.shape)} "
                         f"{q.dtype}, contiguous in its last dim")
    check_device("paged_attention", t)


def _check(q, k_cache, v_cache, cu_seqlens, seq_lens, page_table, page_size) -> None:
    if q.dim() != 3 or k_cache.dim() != 3:
        raise ValueError(f"q {tuple(q.shape)} must be [T, Hq, D], k_cache "
                         f"{tuple(k_cache.shape)} [N, Hkv, D]")
    hq, d = q.shape[1], q.shape[2]
    hkv = k_cache.shape[1]
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride() \
            or k_cache.shape[2] != d:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} "
                         f"must both be [N, Hkv, {d}] with the same strides")
    if hkv == 0 or hq % hkv or not 1 <= d <= 256:
        raise ValueError(f"Hq={hq} must be a multiple of Hkv={hkv}; D={d} must be 1..256")
    if q.dtype not in _FLOATS or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"q, k_cache, v_cache must share one of {_FLOATS}, got {q.dtype}, "
                         f"{k_cache.dtype}, {v_cache.dtype}")
    if q.stride(2) != 1 or k_cache.stride(2) != 1:
        raise ValueError("q, k_cache and v_cache must be contiguous in their last dim")
    B = seq_lens.shape[0] if seq_lens.dim() == 1 else -1
    if B < 0 or cu_seqlens.shape != (B + 1,) or page_table.dim() != 2 \
            or page_table.shape[0] != B or page_table.stride(1) != 1:
        raise ValueError(f"seq_lens {tuple(seq_lens.shape)} must be [B], cu_seqlens "
                         f"{tuple(cu_seqlens.shape)} [B+1], page_table "
                         f"{tuple(page_table.shape)} [B, max_pages] with contiguous rows")
    if any(t.dtype not in _INTS for t in (cu_seqlens, seq_lens, page_table)):
        raise ValueError("cu_seqlens, seq_lens and page_table must be int32 or int64")
    if not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size must be a positive int, got {page_size!r}")
    check_device("paged_attention", q, k_cache, v_cache, cu_seqlens, seq_lens, page_table)
