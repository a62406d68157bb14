"""Triton building blocks shared by the paged-attention kernels (`attention_prefill.py`,
`attention_decode.py`): gathering a block of K/V rows through the page table, and one step of
the online softmax (flash-attention style) over such a block.

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


def gate_strides(gate) -> tuple[int, int]:
    """(token, head) strides of a [T, Hq, D] gate, (0, 0) without one."""
    return (0, 0) if gate is None else (gate.stride(0), gate.stride(1))


def pow2(n: int, floor: int = 1) -> int:
    """The smallest power of two >= max(n, floor) (plain Python: this runs at every launch)."""
    return 1 << (max(n, floor) - 1).bit_length()
