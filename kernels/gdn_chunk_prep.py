"""Triton kernel: the parallel per-chunk stage of the chunked gated-delta-rule prefill.

One program per (chunk of 64 tokens, value head); value head j reads key head j // (Hv // Hk).
With G = the cumsum of the fused gate g over the chunk and D[t, i] = exp(G_t - G_i) (i <= t),
it writes the workspaces of the sequential stage (kernels/gdn_chunk_scan.py):
  G [Hv, T]                 the in-chunk gate cumsum (float32)
  rq, rk [Hk, T]            the q / k L2-norm factors, rq times the q scale (float32)
  P [Hv, T, 64]             causal(Qn Kn^T * D), the intra-chunk attention of the output
  W = X (beta exp(G) Kn), U = X (beta V)  [Hv, T, dk | dv]   with X = (I + A)^-1 and
  A[t, i] = beta_t D[t, i] Kn_t . Kn_i (i < t), inverted by 16 x 16 blocks (the diagonal
  blocks by a nilpotent product series and one Newton step, block products below).
Qn, Kn: the L2-normalised q, k. Dots take operands in the dtype of W (16-bit, or float32 as
3 x tf32). `pipeline="lite"` replaces this kernel by kernels/gdn_chunk_kkt.py (X only) and
kernels/gdn_chunk_wu.py (W, U). Reference: `_chunk_step` in kernels/gdn_ref.py (the WY / UT
form).
"""

from __future__ import annotations

import triton
import triton.language as tl

from qnext.kernels.chunk_map import chunk_bounds
from qnext.kernels.gdn_step import softplus

CHUNK = 64


@triton.jit
def _rows(ptr, row0, end, stride, NC: tl.constexpr, NR: tl.constexpr, BC: tl.constexpr):
    """Rows [row0, row0 + NR) of a row-strided matrix, zero past `end` and past NC columns
    (no column mask when NC == BC: keeps the loads vectorised)."""
    rows = row0 + tl.arange(0, NR)
    cols = tl.arange(0, BC)
    mask = (rows < end)[:, None]
    if NC < BC:
        mask = mask & (cols < NC)[None, :]
    return tl.load(ptr + rows.to(tl.int64)[:, None] * stride + cols[None, :], mask=mask,
                   other=0.0)


@triton.jit
def _rnorm(x, eps, L2NORM: tl.constexpr):
    """Per-row factor of the L2 norm, rsqrt(sum x^2 + eps) (ones without the norm)."""
    xf = x.to(tl.float32)
    return norm_factor(tl.sum(xf * xf, 1), eps, L2NORM)


@triton.jit
def norm_factor(ss, eps, L2NORM: tl.constexpr):
    """rsqrt(ss + eps) of rows' sums of squares ss, or ones without the norm."""
    if L2NORM:
        return 1.0 / tl.sqrt(ss + eps)
    return tl.full(ss.shape, 1.0, tl.float32)


@triton.jit
def _unit_k(k_ptr, row0, end, s_kt, DK: tl.constexpr, eps, BK: tl.constexpr, L2NORM: tl.constexpr):
    """16 rows of k, L2-normalised, float32 [16, BK]."""
    k = _rows(k_ptr, row0, end, s_kt, DK, 16, BK).to(tl.float32)
    return k * _rnorm(k, eps, L2NORM)[:, None]


@triton.jit
def _gates(a_ptr, b_ptr, s_a, s_b, a_log, dt_bias, start, end, i_hv):
    """In-chunk gate cumsum G and beta [64] of one chunk and value head; rows past the end get
    g = 0 so that G stays finite."""
    t = (start + tl.arange(0, 64)).to(tl.int64)
    m = t < end
    x = tl.load(a_ptr + t * s_a + i_hv, mask=m, other=0.0).to(tl.float32) + dt_bias
    g = tl.where(m, -tl.exp(a_log) * softplus(x), 0.0)
    beta = tl.sigmoid(tl.load(b_ptr + t * s_b + i_hv, mask=m, other=0.0).to(tl.float32))
    return tl.cumsum(g, 0), beta


@triton.jit
def stored_gates(a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, s_a, s_b, g_ptr, start, end, i_hv):
    """`_gates` of one chunk and value head, the cumsum G also stored to g_ptr (row-indexed)."""
    G, beta = _gates(a_ptr, b_ptr, s_a, s_b, tl.load(a_log_ptr + i_hv),
                     tl.load(dt_bias_ptr + i_hv), start, end, i_hv)
    rows = start + tl.arange(0, 64)
    tl.store(g_ptr + rows, G, mask=rows < end)
    return G, beta


@triton.jit
def _part(x, i):
    """Elements [16 i, 16 i + 16) of a [64] vector."""
    r, c = tl.arange(0, 16), tl.arange(0, 64)
    return tl.sum(tl.where(c[None, :] == i * 16 + r[:, None], x[None, :], 0.0), 1)


@triton.jit
def _dot_nt(a, b, PREC: tl.constexpr):
    """a b^T, float32 accumulation."""
    return tl.dot(a, tl.trans(b), input_precision=PREC)


@triton.jit
def _mm(a, b, PREC: tl.constexpr):
    """Product of two small float32 blocks (PREC: tf32 for 16-bit outputs, 3 x tf32 else)."""
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _a_block(kk, g_t, g_i, beta_t, DIAG: tl.constexpr):
    """A block: beta_t exp(G_t - G_i) k_t.k_i, strictly lower on the diagonal."""
    diff = g_t[:, None] - g_i[None, :]
    if DIAG:
        r = tl.arange(0, 16)
        diff = tl.where(r[:, None] > r[None, :], diff, float("-inf"))
    return beta_t[:, None] * kk * tl.exp(diff)


@triton.jit
def _unit_lower_inverse(n, PREC: tl.constexpr):
    """(I + n)^-1 of a strictly lower [16, 16] float32 block n, without a sequential loop: n is
    nilpotent (n^16 = 0), so the inverse is (I - n)(I + n^2)(I + n^4)(I + n^8); one Newton
    step x + x (I - (I + n) x) then corrects the rounding of the products (alone ~1e-4 off,
    relative, in float32 when the chunk's keys are strongly correlated). Products in PREC:
    tf32 for 16-bit outputs (X is rounded to 16 bits after), 3 x tf32 for float32. Forward
    substitution in registers (14 dependent row steps) was slower on the H200
    (docs/perf/gdn-prefill.md)."""
    r = tl.arange(0, 16)
    eye = tl.where(r[:, None] == r[None, :], 1.0, 0.0)
    p = _mm(n, n, PREC)
    x = _mm(eye - n, eye + p, PREC)
    p = _mm(p, p, PREC)
    x = _mm(x, eye + p, PREC)
    x = _mm(x, eye + _mm(p, p, PREC), PREC)
    return x + _mm(x, eye - _mm(eye + n, x, PREC), PREC)


@triton.jit
def _inverse(k0, k1, k2, k3, G, beta, dt: tl.constexpr, PREC: tl.constexpr):
    """X = (I + A)^-1 by blocks (see `inverse_blocks`) from the normalised k row blocks (in
    dt) and the gates [64]."""
    kk = (_dot_nt(k0, k0, PREC), _dot_nt(k1, k0, PREC), _dot_nt(k1, k1, PREC),
          _dot_nt(k2, k0, PREC), _dot_nt(k2, k1, PREC), _dot_nt(k2, k2, PREC),
          _dot_nt(k3, k0, PREC), _dot_nt(k3, k1, PREC), _dot_nt(k3, k2, PREC),
          _dot_nt(k3, k3, PREC))
    return inverse_blocks(kk, G, beta, dt, PREC)


@triton.jit
def inverse_blocks(kk, G, beta, dt: tl.constexpr, PREC: tl.constexpr):
    """The 16 x 16 blocks (x00, x10, x11, x20, x21, x22, x30, x31, x32, x33) of
    X = (I + A)^-1 (float32 arithmetic, returned in dt) from the same blocks of Kn Kn^T
    (float32) and the gates [64]."""
    kk00, kk10, kk11, kk20, kk21, kk22, kk30, kk31, kk32, kk33 = kk
    g0, g1, g2, g3 = _part(G, 0), _part(G, 1), _part(G, 2), _part(G, 3)
    b0, b1, b2, b3 = _part(beta, 0), _part(beta, 1), _part(beta, 2), _part(beta, 3)
    x00 = _unit_lower_inverse(_a_block(kk00, g0, g0, b0, True), PREC)
    x11 = _unit_lower_inverse(_a_block(kk11, g1, g1, b1, True), PREC)
    x22 = _unit_lower_inverse(_a_block(kk22, g2, g2, b2, True), PREC)
    x33 = _unit_lower_inverse(_a_block(kk33, g3, g3, b3, True), PREC)
    a10 = _a_block(kk10, g1, g0, b1, False)
    a21 = _a_block(kk21, g2, g1, b2, False)
    a32 = _a_block(kk32, g3, g2, b3, False)
    x10 = -_mm(x11, _mm(a10, x00, PREC), PREC)
    x21 = -_mm(x22, _mm(a21, x11, PREC), PREC)
    x32 = -_mm(x33, _mm(a32, x22, PREC), PREC)
    a20 = _a_block(kk20, g2, g0, b2, False)
    x20 = -_mm(x22, _mm(a20, x00, PREC) + _mm(a21, x10, PREC), PREC)
    a31 = _a_block(kk31, g3, g1, b3, False)
    x31 = -_mm(x33, _mm(a31, x11, PREC) + _mm(a32, x21, PREC), PREC)
    a30 = _a_block(kk30, g3, g0, b3, False)
    x30 = -_mm(x33, _mm(a30, x00, PREC) + _mm(a31, x10, PREC) + _mm(a32, x20, PREC),
                PREC)
    return (x00.to(dt), x10.to(dt), x11.to(dt), x20.to(dt), x21.to(dt), x22.to(dt), x30.to(dt),
            x31.to(dt), x32.to(dt), x33.to(dt))


@triton.jit
def _apply(xs, m0, m1, m2, m3, ptr, start, end, NC: tl.constexpr, BC: tl.constexpr,
           PREC: tl.constexpr):
    """X M for X given by its blocks `xs` (as from _inverse, in the dtype of M) and M by its
    four 16-row blocks, stored row block by row block into a row-major [*, NC] matrix."""
    x00, x10, x11, x20, x21, x22, x30, x31, x32, x33 = xs
    r = start + tl.arange(0, 16)
    _store(ptr, r, end, NC, NC, tl.dot(x00, m0, input_precision=PREC), BC)
    y = tl.dot(x10, m0, input_precision=PREC)
    _store(ptr, r + 16, end, NC, NC, tl.dot(x11, m1, y, input_precision=PREC), BC)
    y = tl.dot(x21, m1, tl.dot(x20, m0, input_precision=PREC), input_precision=PREC)
    _store(ptr, r + 32, end, NC, NC, tl.dot(x22, m2, y, input_precision=PREC), BC)
    y = tl.dot(x31, m1, tl.dot(x30, m0, input_precision=PREC), input_precision=PREC)
    y = tl.dot(x32, m2, y, input_precision=PREC)
    _store(ptr, r + 48, end, NC, NC, tl.dot(x33, m3, y, input_precision=PREC), BC)


@triton.jit
def _store(ptr, rows, nrows, width, NC: tl.constexpr, x, BC: tl.constexpr):
    """x [R, BC] into rows `rows` (< nrows) and the first NC columns of a row-major
    [*, width] matrix."""
    cols = tl.arange(0, BC)
    mask = (rows < nrows)[:, None]
    if NC < BC:
        mask = mask & (cols < NC)[None, :]
    tl.store(ptr + rows.to(tl.int64)[:, None] * width + cols[None, :],
             x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["B", "T", "HV", "HK"])
def chunk_prep_kernel(q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, cu_ptr,
                      w_ptr, u_ptr, p_ptr, g_ptr, rq_ptr, rk_ptr,
                      B, T, s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, s_a, s_b, scale, eps,
                      HV, HK, DK: tl.constexpr, DV: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr,
                      PREC: tl.constexpr):
    """Grid (chunks upper bound, Hv); see the module docstring for what it writes."""
    start, end = chunk_bounds(cu_ptr, tl.program_id(0), B, 64)
    if end <= start:
        return
    i_hv = tl.program_id(1)
    i_hk = i_hv // (HV // HK)
    dt = w_ptr.dtype.element_ty  # the dot operand dtype
    rows = start + tl.arange(0, 64)
    base = i_hv.to(tl.int64) * T
    G, beta = stored_gates(a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, s_a, s_b, g_ptr + base,
                           start, end, i_hv)
    k_h = k_ptr + i_hk * s_kh
    q = _rows(q_ptr + i_hk * s_qh, start, end, s_qt, DK, 64, BK)
    k = _rows(k_h, start, end, s_kt, DK, 64, BK)
    rq = _rnorm(q, eps, L2NORM) * scale
    rk = _rnorm(k, eps, L2NORM)
    if i_hv % (HV // HK) == 0:
        tl.store(rq_ptr + i_hk.to(tl.int64) * T + rows, rq, mask=rows < end)
        tl.store(rk_ptr + i_hk.to(tl.int64) * T + rows, rk, mask=rows < end)
    causal = rows[:, None] >= rows[None, :]
    decay = tl.exp(tl.where(causal, G[:, None] - G[None, :], float("-inf")))
    qk = tl.dot(q.to(dt), tl.trans(k.to(dt)), input_precision=PREC)
    _store(p_ptr + base * 64, rows, end, 64, 64, qk * rq[:, None] * rk[None, :] * decay, 64)
    k0 = _unit_k(k_h, start, end, s_kt, DK, eps, BK, L2NORM)
    k1 = _unit_k(k_h, start + 16, end, s_kt, DK, eps, BK, L2NORM)
    k2 = _unit_k(k_h, start + 32, end, s_kt, DK, eps, BK, L2NORM)
    k3 = _unit_k(k_h, start + 48, end, s_kt, DK, eps, BK, L2NORM)
    xs = _inverse(k0.to(dt), k1.to(dt), k2.to(dt), k3.to(dt), G, beta, dt, PREC)
    _apply(xs, _kb(k0, G, beta, 0, dt), _kb(k1, G, beta, 1, dt), _kb(k2, G, beta, 2, dt),
           _kb(k3, G, beta, 3, dt), w_ptr + base * DK, start, end, DK, BK, PREC)
    v_h = v_ptr + i_hv * s_vh
    _apply(xs, _vb(v_h, start, end, s_vt, beta, 0, DV, BV, dt),
           _vb(v_h, start, end, s_vt, beta, 1, DV, BV, dt),
           _vb(v_h, start, end, s_vt, beta, 2, DV, BV, dt),
           _vb(v_h, start, end, s_vt, beta, 3, DV, BV, dt), u_ptr + base * DV, start, end,
           DV, BV, PREC)


@triton.jit
def _kb(k, G, beta, i, dt: tl.constexpr):
    """Row block i of beta exp(G) Kn, in dt."""
    return ((_part(beta, i) * tl.exp(_part(G, i)))[:, None] * k).to(dt)


@triton.jit
def _vb(v_h, start, end, s_vt, beta, i, DV: tl.constexpr, BV: tl.constexpr, dt: tl.constexpr):
    """Row block i of beta V, in dt."""
    v = _rows(v_h, start + 16 * i, end, s_vt, DV, 16, BV).to(tl.float32)
    return (_part(beta, i)[:, None] * v).to(dt)
