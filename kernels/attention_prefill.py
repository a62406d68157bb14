"""Triton kernel: varlen causal paged attention with a cached prefix (the prefill path).

One program takes BT consecutive new tokens of one sequence and all G = Hq / Hkv query heads
of one KV head: its rows are (token, head) pairs, so every K/V block gathered through the page
table serves the whole GQA group. Keys run in blocks of BN with a flash-attention online
softmax: first the keys every row may see (positions below the tile's first query) without a
mask, then the diagonal blocks with the causal mask.

Programs need no host-side tile count: sequence b owns the tile slots
[cu[b] // BT + b, cu[b + 1] // BT + b + 1), which always hold ceil(new_b / BT) tiles, so the
grid is T // BT + B programs per KV head and each finds its sequence by binary search.

Small grids (few new tokens, or TP4's one KV head a rank, over long cached prefixes) leave
SMs idle while each program walks every key: then each program's keys [0, hi) are cut into
`splits` block-aligned ranges (a third grid axis), each split writes its normalised output and
log-sum-exp, and `attention_tile.merge_splits` combines them (and applies the gate).

Reference: `paged_attention_ref` (kernels/attention_ref.py); float32 accumulation.
Legend: T = new tokens, B = sequences, G = query heads per KV head (GP: padded to a power of 2),
D = head dim (DP: padded), P = page size.
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

MIN_SPLIT_KEYS = 2048  # keys of the longest sequence a split: below, the partial outputs'
# traffic outweighs the gain (fresh 1K prompts at TP4 were 1.6x slower in 2 splits, H200)


@triton.jit
def _find_seq(cu_ptr, pid, B, n_iter, BT: tl.constexpr):
    """The sequence whose tile slots hold program `pid`: the last b in [0, B) whose first
    slot cu[b] // BT + b is <= pid (binary search, n_iter >= bit length of B)."""
    lo = pid * 0
    hi = lo + B - 1
    for _ in range(n_iter):
        mid = (lo + hi + 1) // 2
        start = tl.load(cu_ptr + mid).to(tl.int32) // BT + mid
        lo = tl.where(start <= pid, mid, lo)
        hi = tl.where(start <= pid, hi, mid - 1)
    return lo


@triton.jit(do_not_specialize=["B", "n_iter", "s_pt", "P"])
def _prefill_kernel(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, gate_ptr, cu_ptr, seq_lens_ptr, pt_ptr,
                    B, n_iter, s_qt, s_qh, s_kn, s_kh, s_ot, s_oh, s_os, s_gt, s_gh, s_pt, P,
                    qk_scale, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                    DP: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, GATED: tl.constexpr,
                    PARTIAL: tl.constexpr):
    pid = tl.num_programs(0) - 1 - tl.program_id(0)  # the last, longest tiles first
    i_kv = tl.program_id(1).to(tl.int64)
    i_s = tl.program_id(2)
    b = _find_seq(cu_ptr, pid, B, n_iter, BT)
    q0 = tl.load(cu_ptr + b).to(tl.int32)
    n_new = tl.load(cu_ptr + b + 1).to(tl.int32) - q0
    prefix = tl.load(seq_lens_ptr + b).to(tl.int32) - n_new
    m0 = (pid - (q0 // BT + b)) * BT
    if m0 >= n_new:
        return

    offs_r = tl.arange(0, BT * GP)
    tok = m0 + offs_r // GP
    head = i_kv * G + offs_r % GP
    row_ok = (tok < n_new) & (offs_r % GP < G)
    offs_d = tl.arange(0, DP)
    row_off = (q0 + tok).to(tl.int64)[:, None] * s_qt + head[:, None] * s_qh + offs_d[None, :]
    io_mask = row_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(q_ptr + row_off, mask=io_mask, other=0.0)

    q_pos = prefix + tok
    offs_n = tl.arange(0, BN)
    pt_row = pt_ptr + b.to(tl.int64) * s_pt
    k_head, v_head = k_ptr + i_kv * s_kh, v_ptr + i_kv * s_kh
    acc = tl.zeros([BT * GP, DP], dtype=tl.float32)
    m_i = tl.full([BT * GP], NO_MAX, dtype=tl.float32)
    l_i = tl.zeros([BT * GP], dtype=tl.float32)

    hi = prefix + tl.minimum(m0 + BT, n_new)  # one past the tile's last query position
    lo = hi * 0
    if PARTIAL:  # this split's block-aligned share of the keys [0, hi)
        chunk = split_keys(hi, tl.num_programs(2), BN)
        lo = i_s * chunk
        hi = tl.minimum(lo + chunk, hi)
    full_end = (prefix + m0) // BN * BN  # keys below every query of the tile
    visible = tl.minimum(full_end, hi)
    for n in range(lo, visible, BN):
        pos = n + offs_n
        rows = kv_rows(pt_row, pos, pos < visible, P)
        k = load_rows(k_head, rows, s_kn, offs_d, D, DP)
        v = load_rows(v_head, rows, s_kn, offs_d, D, DP)
        acc, m_i, l_i = softmax_step(q, k, v, acc, m_i, l_i, None, qk_scale, False)
    for n in range(tl.maximum(full_end, lo), hi, BN):
        pos = n + offs_n
        rows = kv_rows(pt_row, pos, pos < hi, P)
        k = load_rows(k_head, rows, s_kn, offs_d, D, DP)
        v = load_rows(v_head, rows, s_kn, offs_d, D, DP)
        causal = pos[None, :] <= q_pos[:, None]
        if PARTIAL:  # a split may end before the tile's last query (whole tile: implied)
            causal = causal & (pos < hi)[None, :]
        acc, m_i, l_i = softmax_step(q, k, v, acc, m_i, l_i, causal, qk_scale, True)

    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    t = (q0 + tok).to(tl.int64)[:, None]
    if PARTIAL:  # normalised, with its log-sum-exp (-inf: no key seen); merged later
        out_off = t * s_ot + head[:, None] * s_oh + i_s * s_os + offs_d[None, :]
        tl.store(out_ptr + out_off, o, mask=row_ok[:, None])
        lse = tl.where(l_i > 0, m_i + tl.math.log2(l_i), float("-inf"))
        tl.store(lse_ptr + ((q0 + tok).to(tl.int64) * tl.num_programs(1) * G + head)
                 * tl.num_programs(2) + i_s, lse, mask=row_ok)
    else:
        o = apply_gate(o, gate_ptr, t * s_gt + head[:, None] * s_gh + offs_d[None, :],
                       io_mask, GATED)
        out_off = t * s_ot + head[:, None] * s_oh + offs_d[None, :]
        tl.store(out_ptr + out_off, o.to(out_ptr.dtype.element_ty), mask=io_mask)


@functools.cache
def prefill_config(head_dim: int, group: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes: rows (BT tokens x GP heads) and keys per block, from the bytes of one row
    (H100: K/V stages + the Q tile must fit 227 KB of shared memory). Head dim 256 in 16 bits
    (Qwen3-Next): 128 rows x 64 keys, 1.2-1.3x faster on an H200 than 128 x 32 at every row
    of `bench_attention.py --prefill-sweep` though it spills (docs/perf/attention.md)."""
    row_bytes = pow2(head_dim, 16) * torch.finfo(dtype).bits // 8
    rows, bn, warps, stages = {128: (128, 64, 4, 3), 256: (128, 64, 8, 2),
                               512: (128, 64, 8, 2)}.get(max(row_bytes, 128), (32, 32, 4, 2))
    gp = pow2(group)
    return dict(BT=max(rows // gp, 1), BN=bn, num_warps=warps, num_stages=stages)


def tile_count(num_tokens: int, num_seqs: int, cfg: dict) -> int:
    """Tile slots a launch holds per KV head (`cfg`: `prefill_config`): T // BT + B (the
    module's docstring says why that always suffices)."""
    return num_tokens // cfg["BT"] + num_seqs


def prefill_splits(q: torch.Tensor, programs: int, max_keys: int) -> int:
    """Key splits for a launch of `programs` (tile, KV head) programs, host-side only
    (`max_keys`: a bound of the longest sequence — the page table's width in keys, which the
    engine sizes to the batch's longest). At least enough for two waves over the SMs
    (the causal tiles' keys differ, so one program a tile leaves SMs idle behind the longest),
    at most one split per `MIN_SPLIT_KEYS` keys of max_keys and 16; from there up to twice
    that, the count whose last wave is fullest (fewest waves per split's share of the work).
    On an H200 (docs/perf/attention.md) this picks 2–6 splits for 1–2K new tokens over 8–32K
    cached ones and 4K fresh ones at TP4, none for fresh 1K prompts or TP1's 4K."""
    sms = num_sms(q.device.index) if q.is_cuda else 4
    cap = max(1, min(max_keys // MIN_SPLIT_KEYS, 16))
    least = min(-(-2 * sms // max(programs, 1)), cap)
    if least == 1:
        return 1
    return min(range(least, min(2 * least, cap) + 1),
               key=lambda s: -(-programs * s // sms) / s)


def prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
            cu_seqlens: torch.Tensor, seq_lens: torch.Tensor, page_table: torch.Tensor,
            page_size: int, scale: float, gate: torch.Tensor | None = None,
            splits: int | None = None) -> None:
    """Writes out [T, Hq, D]; arguments as `paged_attention`. splits: key splits (default
    `prefill_splits`): each (tile, KV head) program's keys cut in that many block-aligned
    ranges, merged by `attention_tile.merge_splits`."""
    T, HQ, D = q.shape
    B, HKV, DP = seq_lens.shape[0], k_cache.shape[1], pow2(D, 16)
    cfg = prefill_config(D, HQ // HKV, q.dtype)
    tiles = tile_count(T, B, cfg)
    if splits is None:
        splits = prefill_splits(q, tiles * HKV, page_table.shape[1] * page_size)
    common = (cu_seqlens, seq_lens, page_table, B, B.bit_length(), q.stride(0), q.stride(1),
              k_cache.stride(0), k_cache.stride(1))
    meta = dict(G=HQ // HKV, GP=pow2(HQ // HKV), D=D, DP=DP, **cfg)
    qk_scale, gating = scale * math.log2(math.e), gate_args(gate, out)
    if splits == 1:
        _prefill_kernel[(tiles, HKV, 1)](
            q, k_cache, v_cache, out, out, gating[0], *common, out.stride(0), out.stride(1), 0,
            *gating[1:], page_table.stride(0), page_size, qk_scale, GATED=gate is not None,
            PARTIAL=False, **meta)
        return
    part = torch.empty(T, HQ, splits, DP, dtype=torch.float32, device=q.device)
    lse = torch.empty(T, HQ, splits, dtype=torch.float32, device=q.device)
    _prefill_kernel[(tiles, HKV, splits)](
        q, k_cache, v_cache, part, lse, gating[0], *common, part.stride(0), part.stride(1),
        part.stride(2), *gating[1:], page_table.stride(0), page_size, qk_scale, GATED=False,
        PARTIAL=True, **meta)
    merge_splits(part, lse, out, gate, seq_lens, cfg["BN"], every=True)
