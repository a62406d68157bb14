"""Triton kernel: the first stage of the "lite" chunked gated-delta-rule prefill, X only.

`gdn_prefill(..., pipeline="lite")` splits the prep kernel (kernels/gdn_chunk_prep.py) the
way flash-linear-attention splits its own: this kernel forms, per (chunk of 64, value head),
only the gates (G, stored), the q / k norm factors (rq, rk, stored by the first value head of
each key head) and X = (I + A)^-1 (stored, lower 16 x 16 blocks, in the dot dtype);
kernels/gdn_chunk_wu.py then forms W and U, the split walk (kernels/gdn_chunk_split.py) the
states, and its output kernel computes the intra-chunk attention P itself from q and k.

Why: on the H200 the prep kernel's work apart from the inverse — 64-row q and k tiles held
in registers, the 64 x 64 P — took 376 of its 853 µs at 16K tokens (docs/perf/gdn-prefill.md),
while FLA's kernel for A and its inverse took 186 µs. Here k streams through in slices of BKS
columns into the ten 16 x 16 blocks of K K^T (raw k; the L2 norm is applied to the products
afterwards, A_ti = rk_t rk_i k_t . k_i), so a program holds little more than those blocks.
Reference: `_chunk_step` in kernels/gdn_ref.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from qnext.kernels.chunk_map import chunk_bounds
from qnext.kernels.gdn_chunk_prep import _rows, inverse_blocks, stored_gates


@triton.jit
def _dot_nt(a, b, dt: tl.constexpr, PREC: tl.constexpr):
    return tl.dot(a.to(dt), tl.trans(b.to(dt)), input_precision=PREC)


@triton.jit
def _gram(k_h, start, end, s_kt, DK: tl.constexpr, BKS: tl.constexpr, dt: tl.constexpr,
          PREC: tl.constexpr):
    """The ten lower 16 x 16 blocks of K K^T (raw k) and the four row blocks' sums of
    squares, over BKS-column slices of k."""
    z = tl.zeros([16, 16], tl.float32)
    a00, a10, a11, a20, a21, a22, a30, a31, a32, a33 = z, z, z, z, z, z, z, z, z, z
    s0, s1, s2, s3 = (tl.zeros([16], tl.float32), tl.zeros([16], tl.float32),
                      tl.zeros([16], tl.float32), tl.zeros([16], tl.float32))
    for c0 in tl.static_range(0, DK, BKS):
        k0 = _rows(k_h + c0, start, end, s_kt, DK - c0, 16, BKS).to(tl.float32)
        k1 = _rows(k_h + c0, start + 16, end, s_kt, DK - c0, 16, BKS).to(tl.float32)
        k2 = _rows(k_h + c0, start + 32, end, s_kt, DK - c0, 16, BKS).to(tl.float32)
        k3 = _rows(k_h + c0, start + 48, end, s_kt, DK - c0, 16, BKS).to(tl.float32)
        s0, s1 = s0 + tl.sum(k0 * k0, 1), s1 + tl.sum(k1 * k1, 1)
        s2, s3 = s2 + tl.sum(k2 * k2, 1), s3 + tl.sum(k3 * k3, 1)
        a00 += _dot_nt(k0, k0, dt, PREC)
        a10 += _dot_nt(k1, k0, dt, PREC)
        a11 += _dot_nt(k1, k1, dt, PREC)
        a20 += _dot_nt(k2, k0, dt, PREC)
        a21 += _dot_nt(k2, k1, dt, PREC)
        a22 += _dot_nt(k2, k2, dt, PREC)
        a30 += _dot_nt(k3, k0, dt, PREC)
        a31 += _dot_nt(k3, k1, dt, PREC)
        a32 += _dot_nt(k3, k2, dt, PREC)
        a33 += _dot_nt(k3, k3, dt, PREC)
    return (a00, a10, a11, a20, a21, a22, a30, a31, a32, a33), (s0, s1, s2, s3)


@triton.jit
def _factor(ss, eps, L2NORM: tl.constexpr):
    """rsqrt(sum of squares + eps), or ones without the norm."""
    if L2NORM:
        return 1.0 / tl.sqrt(ss + eps)
    return tl.full(ss.shape, 1.0, tl.float32)


@triton.jit
def _row_factors(ptr, start, end, stride, eps, DK: tl.constexpr, BKS: tl.constexpr,
                 L2NORM: tl.constexpr):
    """The L2-norm factor of 64 rows, over BKS-column slices."""
    ss = tl.zeros([64], tl.float32)
    for c0 in tl.static_range(0, DK, BKS):
        x = _rows(ptr + c0, start, end, stride, DK - c0, 64, BKS).to(tl.float32)
        ss += tl.sum(x * x, 1)
    return _factor(ss, eps, L2NORM)


@triton.jit
def _store_block(ptr, x, row0, col0, end):
    """A [16, 16] block at (row0, col0) of a row-major [*, 64] matrix, rows < end."""
    rows, cols = row0 + tl.arange(0, 16), col0 + tl.arange(0, 16)
    tl.store(ptr + rows.to(tl.int64)[:, None] * 64 + cols[None, :], x,
             mask=(rows < end)[:, None])


@triton.jit
def _store_lower(xs, ptr, start, end):
    """The blocks of X (as from inverse_blocks) into rows [start, end) of a row-major
    [*, 64] matrix; the blocks above the diagonal are left unwritten."""
    x00, x10, x11, x20, x21, x22, x30, x31, x32, x33 = xs
    _store_block(ptr, x00, start, 0, end)
    _store_block(ptr, x10, start + 16, 0, end)
    _store_block(ptr, x11, start + 16, 16, end)
    _store_block(ptr, x20, start + 32, 0, end)
    _store_block(ptr, x21, start + 32, 16, end)
    _store_block(ptr, x22, start + 32, 32, end)
    _store_block(ptr, x30, start + 48, 0, end)
    _store_block(ptr, x31, start + 48, 16, end)
    _store_block(ptr, x32, start + 48, 32, end)
    _store_block(ptr, x33, start + 48, 48, end)


@triton.jit
def _normalised(kk, f0, f1, f2, f3):
    """The raw blocks of K K^T scaled to those of Kn Kn^T by the rows' norm factors."""
    a00, a10, a11, a20, a21, a22, a30, a31, a32, a33 = kk
    return (a00 * f0[:, None] * f0[None, :], a10 * f1[:, None] * f0[None, :],
            a11 * f1[:, None] * f1[None, :], a20 * f2[:, None] * f0[None, :],
            a21 * f2[:, None] * f1[None, :], a22 * f2[:, None] * f2[None, :],
            a30 * f3[:, None] * f0[None, :], a31 * f3[:, None] * f1[None, :],
            a32 * f3[:, None] * f2[None, :], a33 * f3[:, None] * f3[None, :])


@triton.jit(do_not_specialize=["B", "T"])
def chunk_kkt_kernel(q_ptr, k_ptr, a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, cu_ptr, x_ptr, g_ptr,
                     rq_ptr, rk_ptr, B, T, s_qt, s_qh, s_kt, s_kh, s_a, s_b, scale, eps,
                     HV: tl.constexpr, HK: tl.constexpr, DK: tl.constexpr,
                     BKS: tl.constexpr, L2NORM: tl.constexpr, PREC: tl.constexpr):
    """Grid (chunks upper bound, Hv); see the module docstring."""
    start, end = chunk_bounds(cu_ptr, tl.program_id(0), B, 64)
    if end <= start:
        return
    i_hv = tl.program_id(1)
    i_hk = i_hv // (HV // HK)
    dt = x_ptr.dtype.element_ty  # the dot operand dtype
    rows = start + tl.arange(0, 64)
    base = i_hv.to(tl.int64) * T
    G, beta = stored_gates(a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, s_a, s_b, g_ptr + base,
                           start, end, i_hv)
    k_h = k_ptr + i_hk * s_kh
    if i_hv % (HV // HK) == 0:
        rq = _row_factors(q_ptr + i_hk * s_qh, start, end, s_qt, eps, DK, BKS, L2NORM) * scale
        rk = _row_factors(k_h, start, end, s_kt, eps, DK, BKS, L2NORM)
        tl.store(rq_ptr + i_hk.to(tl.int64) * T + rows, rq, mask=rows < end)
        tl.store(rk_ptr + i_hk.to(tl.int64) * T + rows, rk, mask=rows < end)
    kk, ss = _gram(k_h, start, end, s_kt, DK, BKS, dt, PREC)
    s0, s1, s2, s3 = ss
    kk = _normalised(kk, _factor(s0, eps, L2NORM), _factor(s1, eps, L2NORM),
                     _factor(s2, eps, L2NORM), _factor(s3, eps, L2NORM))
    xs = inverse_blocks(kk, G, beta, dt, PREC)
    _store_lower(xs, x_ptr + base * 64, start, end)

