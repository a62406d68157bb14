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
from qnext.kernels.gdn_chunk_prep import (_dot_nt, _rows, _store, inverse_blocks,
                                         norm_factor, stored_gates)


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
        k0, k1, k2, k3 = k0.to(dt), k1.to(dt), k2.to(dt), k3.to(dt)
        a00 += _dot_nt(k0, k0, PREC)
        a10 += _dot_nt(k1, k0, PREC)
        a11 += _dot_nt(k1, k1, PREC)
        a20 += _dot_nt(k2, k0, PREC)
        a21 += _dot_nt(k2, k1, PREC)
        a22 += _dot_nt(k2, k2, PREC)
        a30 += _dot_nt(k3, k0, PREC)
        a31 += _dot_nt(k3, k1, PREC)
        a32 += _dot_nt(k3, k2, PREC)
        a33 += _dot_nt(k3, k3, PREC)
    return (a00, a10, a11, a20, a21, a22, a30, a31, a32, a33), (s0, s1, s2, s3)


@triton.jit
def _row_factors(ptr, start, end, stride, eps, DK: tl.constexpr, BKS: tl.constexpr,
                 L2NORM: tl.constexpr):
    """The L2-norm factor of 64 rows, over BKS-column slices."""
    ss = tl.zeros([64], tl.float32)
    for c0 in tl.static_range(0, DK, BKS):
        x = _rows(ptr + c0, start, end, stride, DK - c0, 64, BKS).to(tl.float32)
        ss += tl.sum(x * x, 1)
    return norm_factor(ss, eps, L2NORM)


@triton.jit
def _store_lower(xs, ptr, start, end):
    """The blocks of X (as from inverse_blocks) into rows [start, end) of a row-major
    [*, 64] matrix; the blocks above the diagonal are left unwritten."""
    x00, x10, x11, x20, x21, x22, x30, x31, x32, x33 = xs
    r = start + tl.arange(0, 16)
    _store(ptr, r, end, 64, 16, x00, 16)
    _store(ptr, r + 16, end, 64, 16, x10, 16)
    _store(ptr + 16, r + 16, end, 64, 16, x11, 16)
    _store(ptr, r + 32, end, 64, 16, x20, 16)
    _store(ptr + 16, r + 32, end, 64, 16, x21, 16)
    _store(ptr + 32, r + 32, end, 64, 16, x22, 16)
    _store(ptr, r + 48, end, 64, 16, x30, 16)
    _store(ptr + 16, r + 48, end, 64, 16, x31, 16)
    _store(ptr + 32, r + 48, end, 64, 16, x32, 16)
    _store(ptr + 48, r + 48, end, 64, 16, x33, 16)


@triton.jit
def _store_rows(ptr, start, end, f0, f1, f2, f3):
    """Four 16-row pieces of a [64] vector at ptr .. ptr + 64 (rows start + i < end)."""
    r = start + tl.arange(0, 16)
    tl.store(ptr, f0, mask=r < end)
    tl.store(ptr + 16, f1, mask=r + 16 < end)
    tl.store(ptr + 32, f2, mask=r + 32 < end)
    tl.store(ptr + 48, f3, mask=r + 48 < end)


@triton.jit
def _normalised(kk, f0, f1, f2, f3):
    """The raw blocks of K K^T scaled to those of Kn Kn^T by the rows' norm factors."""
    a00, a10, a11, a20, a21, a22, a30, a31, a32, a33 = kk
    return (a00 * f0[:, None] * f0[None, :], a10 * f1[:, None] * f0[None, :],
            a11 * f1[:, None] * f1[None, :], a20 * f2[:, None] * f0[None, :],
            a21 * f2[:, None] * f1[None, :], a22 * f2[:, None] * f2[None, :],
            a30 * f3[:, None] * f0[None, :], a31 * f3[:, None] * f1[None, :],
            a32 * f3[:, None] * f2[None, :], a33 * f3[:, None] * f3[None, :])


@triton.jit(do_not_specialize=["B", "T", "HV", "HK"])
def chunk_kkt_kernel(q_ptr, k_ptr, a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, cu_ptr, x_ptr, g_ptr,
                     rq_ptr, rk_ptr, B, T, s_qt, s_qh, s_kt, s_kh, s_a, s_b, scale, eps,
                     HV, HK, DK: tl.constexpr, BKS: tl.constexpr, L2NORM: tl.constexpr,
                     PREC: tl.constexpr):
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
    kk, ss = _gram(k_ptr + i_hk * s_kh, start, end, s_kt, DK, BKS, dt, PREC)
    s0, s1, s2, s3 = ss
    f0, f1 = norm_factor(s0, eps, L2NORM), norm_factor(s1, eps, L2NORM)
    f2, f3 = norm_factor(s2, eps, L2NORM), norm_factor(s3, eps, L2NORM)
    if i_hv % (HV // HK) == 0:  # the key head's norm factors, once
        rq = _row_factors(q_ptr + i_hk * s_qh, start, end, s_qt, eps, DK, BKS, L2NORM) * scale
        tl.store(rq_ptr + i_hk.to(tl.int64) * T + rows, rq, mask=rows < end)
        rk_at = rk_ptr + i_hk.to(tl.int64) * T + start + tl.arange(0, 16)
        _store_rows(rk_at, start, end, f0, f1, f2, f3)
    kk = _normalised(kk, f0, f1, f2, f3)
    xs = inverse_blocks(kk, G, beta, dt, PREC)
    _store_lower(xs, x_ptr + base * 64, start, end)

