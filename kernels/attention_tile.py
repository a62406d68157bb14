"""Triton building blocks shared by the paged-attention kernels (`attention_prefill.py`,
`attention_decode.py`): gathering a block of K/V rows through the page table, one step of
the online softmax (flash-attention style) over such a block, and the merge of key splits
(flash-decoding: each split's normalised output and log-sum-exp).

Reference: `paged_attention_ref` (kernels/attention_ref.py). Scores are kept in base 2: the
caller folds log2(e) into `qk_scale`, so exp2 replaces exp. Accumulation in float32.
Legend: BN = keys per block, DP = head dim padded to a power of two, P = page size (a
runtime value: one compiled kernel serves every page size).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Running max of a row that has seen no key yet: finite, so that exp2(m_old - m_new) stays a
# number for rows every key of a block masks out (masked scores are -inf).
NO_MAX = tl.constexpr(-1.0e30)


@triton.jit
def kv_rows(page_row_ptr, pos, valid, P):
    """Pool rows (kv_loc, int64) of positions `pos` [BN] of one sequence; row 0 where not
    `valid` (so loads need no mask and never read past the page-table row)."""
    page = tl.load(page_row_ptr + pos // P, mask=valid, other=0).to(tl.int64)
    return tl.where(valid, page * P + pos % P, 0)


@triton.jit
def load_rows(head_ptr, rows, s_n, offs_d, D: tl.constexpr, DP: tl.constexpr):
    """[BN, DP] tile of one KV head: rows `rows` of the pool (stride s_n), dims >= D zero."""
    ptrs = head_ptr + rows[:, None] * s_n + offs_d[None, :]
    if D == DP:
        tile = tl.load(ptrs)
    else:
        tile = tl.load(ptrs, mask=offs_d[None, :] < D, other=0.0)
    return tile


@triton.jit
def softmax_step(q, k, v, acc, m_i, l_i, mask, qk_scale, MASKED: tl.constexpr):
    """Fold one key block into the running (acc [M, DP], row max m_i [M], row sum l_i [M]).

    q [M, DP], k / v [BN, DP]; `mask` [M, BN] (or broadcastable) marks the keys each row may
    see, used only when MASKED. Returns the updated (acc, m_i, l_i)."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
    if MASKED:
        s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
    return acc, m_new, l_i


@triton.jit
def apply_gate(o, gate_ptr, offs, mask, GATED: tl.constexpr):
    """o * sigmoid(gate[offs]) in float32 when GATED (the gated attention's output gate,
    applied before the single rounding to the output dtype), else o."""
    if GATED:
        o = o * tl.sigmoid(tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32))
    return o


@triton.jit
def split_keys(ctx, n_splits, BN: tl.constexpr):
    """Keys a split of a ctx-long key range: equal, block-aligned ranges, at least one block
    (the last ones may be empty: cdiv(ctx, split_keys) splits hold keys)."""
    return tl.maximum(tl.cdiv(tl.cdiv(ctx, n_splits), BN), 1) * BN


@triton.jit(do_not_specialize=["n_splits"])
def _merge_kernel(part_ptr, lse_ptr, out_ptr, gate_ptr, seq_lens_ptr, n_splits, s_ot, s_oh,
                  s_gt, s_gh, D: tl.constexpr, DP: tl.constexpr, SP: tl.constexpr,
                  BN: tl.constexpr, GATED: tl.constexpr, EVERY: tl.constexpr):
    """out[r, h] = sum_s w_s * part[r, h, s] / sum_s w_s, w_s = 2^(lse_s - max lse), over every
    split (EVERY: each wrote, lse -inf where it saw no key) or over the splits of row r's
    context seq_lens[r] that hold keys (decode: empty ones wrote nothing)."""
    i_r = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1).to(tl.int64)
    row = i_r * tl.num_programs(1) + i_h
    if EVERY:
        used = n_splits
    else:
        ctx = tl.load(seq_lens_ptr + i_r).to(tl.int32)
        used = tl.maximum(tl.cdiv(ctx, split_keys(ctx, n_splits, BN)), 1)
    offs_s = tl.arange(0, SP)
    offs_d = tl.arange(0, DP)
    lse = tl.load(lse_ptr + row * n_splits + offs_s, mask=offs_s < used, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.where(lse > float("-inf"), tl.math.exp2(lse - m), 0.0)
    mask = (offs_s[:, None] < used) & (offs_d[None, :] < D)
    part = tl.load(part_ptr + (row * n_splits + offs_s[:, None]) * DP + offs_d[None, :],
                   mask=mask, other=0.0)
    o = tl.sum(part * w[:, None], 0) / tl.maximum(tl.sum(w, 0), 1e-30)
    o = apply_gate(o, gate_ptr, i_r * s_gt + i_h * s_gh + offs_d, offs_d < D, GATED)
    tl.store(out_ptr + i_r * s_ot + i_h * s_oh + offs_d, o.to(out_ptr.dtype.element_ty),
             mask=offs_d < D)


def merge_splits(part, lse, out, gate, seq_lens, block_n: int, every: bool = False) -> None:
    """Writes out [R, Hq, D] (gated when `gate`) from the splits' normalised partial outputs
    part [R, Hq, S, DP] and base-2 log-sum-exps lse [R, Hq, S] (float32). every: all S splits
    wrote (prefill); else row r's used splits follow from seq_lens[r] and block_n (decode)."""
    R, HQ, S, DP = part.shape
    gating = gate_args(gate, out)
    _merge_kernel[(R, HQ)](part, lse, out, gating[0], seq_lens, S, out.stride(0),
                           out.stride(1), *gating[1:], D=out.shape[2], DP=DP, SP=pow2(S),
                           BN=block_n, GATED=gate is not None, EVERY=every)


def gate_args(gate, out) -> tuple:
    """(pointer, token stride, head stride) of a [T, Hq, D] gate for a kernel's gate
    arguments; without one, `out` stands in for the pointer (never read) and the strides are 0."""
    return (out, 0, 0) if gate is None else (gate, gate.stride(0), gate.stride(1))


def pow2(n: int, floor: int = 1) -> int:
    """The smallest power of two >= max(n, floor) (plain Python: this runs at every launch)."""
    return 1 << (max(n, floor) - 1).bit_length()
