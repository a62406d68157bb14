"""Triton kernels: paged attention for decode (one new token per sequence), split-K.

`_decode_kernel`: one program per (sequence, KV head, split); its rows are the G query heads
of the KV head (padded to >= 16 for the tensor cores), so each K/V block gathered through the
page table is read once for the whole GQA group. A sequence's context is cut into `splits`
equal, block-aligned ranges (flash-decoding); with one split the program writes the output,
otherwise it writes a normalised partial output and its log-sum-exp (base 2) — splits past the
context write nothing — and `attention_tile.merge_splits` merges the splits of each (sequence,
query head) that hold keys (CUDA graphs fix the split count for the longest context; a short
one leaves most splits empty).

Reference: `paged_attention_ref` (kernels/attention_ref.py) with one query per sequence;
float32 accumulation. Legend: B = sequences (= new tokens), G = Hq / Hkv, D = head dim
(DP: padded to a power of 2), P = page size, S = splits.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from qnext.kernels.attention_tile import (
    NO_MAX,
    apply_gate,
    gate_args,
    kv_rows,
    load_rows,
    merge_splits,
    pow2,
    softmax_step,
    split_keys,
)
from qnext.kernels.launch import num_sms


@triton.jit(do_not_specialize=["s_pt", "P"])
def _decode_kernel(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, gate_ptr, seq_lens_ptr, pt_ptr,
                   s_qt, s_qh, s_kn, s_kh, s_ob, s_oh, s_os, s_gt, s_gh, s_pt, P, qk_scale,
                   G: tl.constexpr, HP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                   BN: tl.constexpr, PARTIAL: tl.constexpr, GATED: tl.constexpr):
    i_b = tl.program_id(0).to(tl.int64)
    i_kv = tl.program_id(1).to(tl.int64)
    i_s = tl.program_id(2)
    n_splits = tl.num_programs(2)
    ctx = tl.load(seq_lens_ptr + i_b).to(tl.int32)
    chunk = split_keys(ctx, n_splits, BN)
    start = i_s * chunk
    end = tl.minimum(start + chunk, ctx)
    if PARTIAL:
        if (start >= ctx) & (i_s > 0):
            return  # an empty split: the reduce reads only the first cdiv(ctx, chunk)

    offs_g = tl.arange(0, HP)
    offs_d = tl.arange(0, DP)
    head = i_kv * G + offs_g
    io_mask = (offs_g[:, None] < G) & (offs_d[None, :] < D)
    q = tl.load(q_ptr + i_b * s_qt + head[:, None] * s_qh + offs_d[None, :], mask=io_mask,
                other=0.0)

    offs_n = tl.arange(0, BN)
    pt_row = pt_ptr + i_b * s_pt
    k_head, v_head = k_ptr + i_kv * s_kh, v_ptr + i_kv * s_kh
    acc = tl.zeros([HP, DP], dtype=tl.float32)
    m_i = tl.full([HP], NO_MAX, dtype=tl.float32)
    l_i = tl.zeros([HP], dtype=tl.float32)
    for n in range(start, end, BN):
        pos = n + offs_n
        valid = pos < end
        rows = kv_rows(pt_row, pos, valid, P)
        k = load_rows(k_head, rows, s_kn, offs_d, D, DP)
        v = load_rows(v_head, rows, s_kn, offs_d, D, DP)
        acc, m_i, l_i = softmax_step(q, k, v, acc, m_i, l_i, valid[None, :], qk_scale, True)

    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o = apply_gate(o, gate_ptr, i_b * s_gt + head[:, None] * s_gh + offs_d[None, :], io_mask,
                   GATED)
    out_off = i_b * s_ob + head[:, None] * s_oh + i_s * s_os + offs_d[None, :]
    tl.store(out_ptr + out_off, o.to(out_ptr.dtype.element_ty), mask=io_mask)
    if PARTIAL:
        lse = tl.where(l_i > 0, m_i + tl.math.log2(l_i), float("-inf"))
        tl.store(lse_ptr + (i_b * tl.num_programs(1) * G + head) * n_splits + i_s, lse,
                 mask=offs_g < G)


def default_splits(q: torch.Tensor, num_seqs: int, num_kv_heads: int, max_context: int) -> int:
    """Enough (sequence, KV head, split) programs for ~2 waves over the SMs, each split at
    least 256 keys, at most 128 splits. Host-side only: `max_context` is an upper bound."""
    sms = num_sms(q.device.index) if q.is_cuda else 4
    want = -(-2 * sms // max(num_seqs * num_kv_heads, 1))
    return max(1, min(want, -(-max_context // 256), 128))


@functools.cache
def decode_config(head_dim: int, dtype: torch.dtype) -> dict[str, int]:
    """Keys per block and pipeline depth from the bytes of one K/V row (227 KB of H100 smem)."""
    row_bytes = pow2(head_dim, 16) * torch.finfo(dtype).bits // 8
    return dict(BN=64 if row_bytes <= 512 else 32, num_warps=4,
                num_stages=3 if row_bytes <= 256 else 2)


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
           seq_lens: torch.Tensor, page_table: torch.Tensor, page_size: int, scale: float,
           splits: int, gate: torch.Tensor | None = None) -> None:
    """Writes out [B, Hq, D] (row b: sequence b's token); arguments as `paged_attention`."""
    B, HQ, D = q.shape
    HKV, DP = k_cache.shape[1], pow2(D, 16)
    common = dict(G=HQ // HKV, HP=pow2(HQ // HKV, 16), D=D, DP=DP, **decode_config(D, q.dtype))
    strides = (q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1))
    qk_scale = scale * math.log2(math.e)
    gating = gate_args(gate, out)
    if splits == 1:  # the one writer of out applies the gate
        _decode_kernel[(B, HKV, 1)](
            q, k_cache, v_cache, out, out, gating[0], seq_lens, page_table, *strides,
            out.stride(0), out.stride(1), 0, *gating[1:], page_table.stride(0), page_size,
            qk_scale, PARTIAL=False, GATED=gate is not None, **common)
        return
    part = torch.empty(B, HQ, splits, DP, dtype=torch.float32, device=q.device)
    lse = torch.empty(B, HQ, splits, dtype=torch.float32, device=q.device)
    _decode_kernel[(B, HKV, splits)](
        q, k_cache, v_cache, part, lse, gating[0], seq_lens, page_table, *strides,
        part.stride(0), part.stride(1), part.stride(2), *gating[1:], page_table.stride(0),
        page_size, qk_scale, PARTIAL=True, GATED=False, **common)
    merge_splits(part, lse, out, gate, seq_lens, common["BN"])
