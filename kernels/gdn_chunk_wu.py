"""Triton kernel: W and U of the "lite" chunked gated-delta-rule prefill, as 64-row products.

kernels/gdn_chunk_kkt.py leaves X = (I + A)^-1 of every chunk and value head in a workspace
[Hv, T, 64] (lower blocks; the rest is masked to zero here) with the gate cumsum G and the k
norm factors rk. One program per (chunk, value head) then forms
  W = X (beta exp(G) Kn),   U = X (beta V)
with one [64, 64] x [64, d] dot each, where the fused prep kernel (kernels/gdn_chunk_prep.py)
chains ten [16, 16] x [16, d] dots per product. Same operand dtype and roundings (X and the
right-hand sides rounded to the dot dtype, float32 accumulation). Reference: `_chunk_step` in
kernels/gdn_ref.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from qnext.kernels.chunk_map import chunk_bounds
from qnext.kernels.gdn_chunk_prep import _rows, _store


@triton.jit(do_not_specialize=["B", "T", "HV", "HK"])
def chunk_wu_kernel(k_ptr, v_ptr, b_ptr, x_ptr, g_ptr, rk_ptr, cu_ptr, w_ptr, u_ptr,
                    B, T, s_kt, s_kh, s_vt, s_vh, s_b,
                    HV, HK, DK: tl.constexpr, DV: tl.constexpr,
                    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Grid (chunks upper bound, Hv); see the module docstring."""
    start, end = chunk_bounds(cu_ptr, tl.program_id(0), B, 64)
    if end <= start:
        return
    i_hv = tl.program_id(1)
    i_hk = i_hv // (HV // HK)
    dt = w_ptr.dtype.element_ty
    r = tl.arange(0, 64)
    rows = start + r
    m = rows < end
    base = i_hv.to(tl.int64) * T
    x = tl.load(x_ptr + (base + rows.to(tl.int64))[:, None] * 64 + r[None, :],
                mask=m[:, None] & (r[:, None] >= r[None, :]), other=0.0)
    beta = tl.sigmoid(tl.load(b_ptr + rows.to(tl.int64) * s_b + i_hv, mask=m,
                              other=0.0).to(tl.float32))
    g = tl.load(g_ptr + base + rows, mask=m, other=0.0)
    rk = tl.load(rk_ptr + i_hk.to(tl.int64) * T + rows, mask=m, other=0.0)
    k = _rows(k_ptr + i_hk * s_kh, start, end, s_kt, DK, 64, BK).to(tl.float32)
    k = k * (rk * beta * tl.exp(g))[:, None]
    _store(w_ptr + base * DK, rows, end, DK, DK, tl.dot(x, k.to(dt), input_precision=PREC), BK)
    v = _rows(v_ptr + i_hv * s_vh, start, end, s_vt, DV, 64, BV).to(tl.float32) * beta[:, None]
    _store(u_ptr + base * DV, rows, end, DV, DV, tl.dot(x, v.to(dt), input_precision=PREC), BV)

