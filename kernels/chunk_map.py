"""Triton helpers: where a chunk of a varlen batch lies, found on the device from cu_seqlens.

Chunks are [s, s + C) inside each sequence (the last one partial), numbered sequence after
sequence. Both helpers walk cu_seqlens in blocks of 16 sequences with a running count, so no
compile-time size depends on the number of sequences: one compiled kernel serves every batch
(a block size of next_power_of_2(B) made each new power of two a new Triton compilation, which
the start-up warm-up could not cover, tests/gpu/test_gpu_warmup.py). Loops are `while` loops:
Triton's CPU interpreter takes no tensor bound in `range`.
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
