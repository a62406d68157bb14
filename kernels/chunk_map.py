"""Triton helpers: where a chunk, or a block of rows, of a varlen batch lies, found on the
device from cu_seqlens.

Chunks are [s, s + C) inside each sequence (the last one partial), numbered sequence after
sequence. Both helpers walk cu_seqlens in blocks of 16 sequences with a running count, so no
compile-time size depends on the number of sequences: one compiled kernel serves every batch
(a block size of next_power_of_2(B) made each new power of two a new Triton compilation, which
the start-up warm-up could not cover, tests/gpu/test_gpu_warmup.py). Loops are `while` loops:
Triton's CPU interpreter takes no tensor bound in `range`. The row searches (`count_le`,
`count_le_wide`, `walk_starts`) serve the conv prefill kernel (kernels/conv_prefill.py).
"""

from __future__ import annotations

import triton
import triton.language as tl

SEQ_BLOCK = tl.constexpr(16)


@triton.jit
def _chunk_counts(cu_ptr, b0, B, C: tl.constexpr):
    """(starts, ends, chunk counts) of sequences b0 .. b0 + 16 (zeros past B)."""
    offs = b0 + tl.arange(0, SEQ_BLOCK)
    lo = tl.load(cu_ptr + offs, mask=offs < B, other=0).to(tl.int32)
    hi = tl.load(cu_ptr + offs + 1, mask=offs < B, other=0).to(tl.int32)
    return lo, hi, (hi - lo + C - 1) // C


@triton.jit
def chunk_bounds(cu_ptr, i_c, B, C: tl.constexpr):
    """Token range [start, end) of flat chunk i_c; end <= start past the last chunk."""
    start = i_c * 0
    end = i_c * 0
    before = i_c * 0  # chunks of the sequences already walked
    b0 = i_c * 0
    while b0 < B:
        lo, hi, n = _chunk_counts(cu_ptr, b0, B, C)
        first = before + tl.cumsum(n, 0) - n  # each sequence's first chunk number
        sel = (first <= i_c) & (i_c < first + n)
        s = lo + (i_c - first) * C
        start += tl.sum(tl.where(sel, s, 0), 0)
        end += tl.sum(tl.where(sel, tl.minimum(s + C, hi), 0), 0)
        before += tl.sum(n, 0)
        b0 += SEQ_BLOCK
    return start, end


@triton.jit
def chunks_before(cu_ptr, i_b, C: tl.constexpr):
    """Number of chunks of sequences 0 .. i_b - 1."""
    total = i_b * 0
    b0 = i_b * 0
    while b0 < i_b:
        _, _, n = _chunk_counts(cu_ptr, b0, i_b, C)
        total += tl.sum(n, 0)
        b0 += SEQ_BLOCK
    return total


@triton.jit
def count_le(ptr, n, v, n_iter):
    """Elementwise over v: how many of ptr[0 .. n) (non-decreasing) are <= v."""
    lo = v * 0
    hi = lo + n
    step = tl.program_id(0) * 0
    while step < n_iter:  # n_iter = bit_length(n) halvings
        step += 1
        mid = (lo + hi) // 2
        inside = mid < hi
        le = tl.load(ptr + mid, mask=inside, other=0) <= v
        lo = tl.where(inside & le, mid + 1, lo)
        hi = tl.where(inside & (le == 0), mid, hi)
    return lo


@triton.jit
def count_le_wide(ptr, n, v, BN: tl.constexpr):
    """`count_le` of a scalar v, BN samples a load: the range holding the answer shrinks
    BN-fold a dependent load, not 2-fold (2 loads, not 10, at 1024 sequences, BN 32). The
    conv prefill uses it only where no interior block runs: in the launch that holds those it
    cost long prompts ~13 % (docs/perf/conv-prefill.md)."""
    lo = v * 0
    hi = lo + n
    while lo < hi:
        step = (hi - lo + BN - 1) // BN
        pos = lo + (tl.arange(0, BN) + 1) * step - 1  # sample k: are the first k+1 steps <= v?
        inside = pos < hi
        m = tl.sum((inside & (tl.load(ptr + pos, mask=inside, other=0) <= v)).to(tl.int32))
        lo += m * step
        hi = tl.minimum(hi, lo + step - 1)  # sample m (if inside) is > v
    return lo


@triton.jit
def walk_starts(t, t0, b0, start0, cu_ptr, B, BT: tl.constexpr, BN: tl.constexpr):
    """First rows of the sequences of rows t [BT] (block t0), and the end of the sequences
    starting in the block, from cu_seqlens[b0+1 ..] read BN at a time: one vector load, not
    four searches. Every start after b0 (row t0's sequence, clamped) is > t0, and a row's
    first row is the greatest start <= it (rows past the batch: never owned, whatever they
    get). One step unless BN starts crowd into the block (tiny or empty sequences)."""
    first = t * 0 + start0
    n_new = b0 * 0
    base = b0 + 1
    more = base > 0
    while more:
        idx = base + tl.arange(0, BN)
        ok = idx <= B
        c = tl.load(cu_ptr + idx, mask=ok, other=0).to(tl.int64)
        le = ok[None, :] & (c[None, :] <= t[:, None])
        first = tl.maximum(first, tl.max(tl.where(le, c[None, :], -1), axis=1))
        in_block = ok & (c < t0 + BT)
        n_new += tl.sum((in_block & (idx < B)).to(tl.int32))
        more = tl.sum(in_block.to(tl.int32)) == BN
        base += BN
    return first, b0 + 1 + n_new
