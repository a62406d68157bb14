"""Triton kernels: the sequential stage of the chunked gated-delta-rule prefill split in two,
for long sequences (`gdn_prefill(..., pipeline="split")`, and "lite").

The fused scan (kernels/gdn_chunk_scan.py) computes each chunk's outputs inside the sequential
walk, so a long sequence walks four dots per chunk on (value blocks x heads) programs only.
Here the walk keeps two (same algebra as the fused scan):
  V' = U - W S         (written over U: nothing else reads U)
  S <- exp(G_last) S + K^T diag(rk exp(G_last - G)) V'
and stores the state entering every chunk (`h` [chunks, Hv, dk, dv], in the dot dtype). Then
one program per (chunk, value head, value block), all in parallel, computes
  O = diag(rq exp(G)) Q S_c + P V'.
Chunks are numbered sequence after sequence (`chunk_bounds`); the walk finds its sequence's
first chunk number from the lengths before it. Final states and snapshots as in the scan.
Reference: `chunk_gated_delta_rule_ref` in kernels/gdn_ref.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from qnext.kernels.chunk_map import chunk_bounds, chunks_before
from qnext.kernels.gdn_chunk_scan import _snapshot, _tile, initial_state


@triton.jit
def _walk_chunk(s, c, start, end, base, k_h, w_ptr, u_ptr, g_ptr, rk_h, h_ptr, s_kt,
                offs_k, offs_v, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr,
                PREC: tl.constexpr):
    """Stores the state entering chunk c at h_ptr and V' over U; returns the state after it."""
    dt = w_ptr.dtype.element_ty
    r = tl.arange(0, 64)
    rows = start + c * 64 + r
    last = tl.minimum(start + c * 64 + 64, end) - 1
    m = rows < end
    full_k: tl.constexpr = BK == DK
    v_mask = m[:, None] & (offs_v < DV)[None, :]
    tl.store(h_ptr, s.to(dt), mask=(offs_k < DK)[:, None] & (offs_v < DV)[None, :])
    w = _tile(w_ptr + base * DK, rows, end, DK, offs_k, DK, full_k)
    u_at = u_ptr + (base + rows.to(tl.int64))[:, None] * DV + offs_v[None, :]
    u = tl.load(u_at, mask=v_mask, other=0.0).to(tl.float32)
    k = _tile(k_h, rows, end, s_kt, offs_k, DK, full_k)
    g = tl.load(g_ptr + base + rows, mask=m, other=0.0)
    g_last = tl.load(g_ptr + base + last)
    v_new = u - tl.dot(w, s.to(dt), input_precision=PREC)
    tl.store(u_at, v_new.to(dt), mask=v_mask)
    k_decay = tl.load(rk_h + rows, mask=m, other=0.0) * tl.exp(g_last - g)
    v_k = (v_new * k_decay[:, None]).to(dt)
    return s * tl.exp(g_last) + tl.dot(tl.trans(k.to(dt)), v_k, input_precision=PREC)


@triton.jit(do_not_specialize=["T", "B"])
def chunk_state_kernel(k_ptr, w_ptr, u_ptr, g_ptr, rk_ptr, h_ptr, state_ptr, cu_ptr, slot_ptr,
                       init_ptr, snap_ptr, snap_at_ptr, T, B, s_kt, s_kh, s_ss, s_sh, s_sk,
                       HV: tl.constexpr, HK: tl.constexpr, DK: tl.constexpr,
                       DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       PREC: tl.constexpr, HAS_SNAP: tl.constexpr,
                       WHILE_LOOP: tl.constexpr):
    """Grid (cdiv(dv, BV), Hv, B): the walk over one sequence's chunks (see the docstring).
    WHILE_LOOP: for Triton's CPU interpreter (no tensor bound in `range`); on the GPU the
    `range` loop lets Triton pipeline the next chunk's loads."""
    i_v, i_hv, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(cu_ptr + i_b).to(tl.int32)
    end = tl.load(cu_ptr + i_b + 1).to(tl.int32)
    if end <= start:
        return
    first = chunks_before(cu_ptr, i_b, 64)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    s, slot_ptrs, s_tile, s_mask, snap, snap_at = initial_state(
        state_ptr, slot_ptr, init_ptr, snap_ptr, snap_at_ptr, i_b, i_hv, offs_k, offs_v, s_ss,
        s_sh, s_sk, DK, DV, BK, BV, HAS_SNAP)
    i_hk = i_hv // (HV // HK)
    h_at = (h_ptr, first, offs_k[:, None] * DV + offs_v[None, :], i_hv)
    args = (start, end, i_hv.to(tl.int64) * T, k_ptr + i_hk * s_kh, w_ptr, u_ptr, g_ptr,
            rk_ptr + i_hk.to(tl.int64) * T, s_kt, offs_k, offs_v)
    snap_args = (state_ptr, snap, snap_at, end - start, s_ss, s_sh, i_hv, s_tile, s_mask)
    n_chunks = tl.cdiv(end - start, 64)
    if WHILE_LOOP:
        c = 0
        while c < n_chunks:
            s = _walk_step(s, c, h_at, args, snap_args, HV, DK, DV, BK, PREC, HAS_SNAP)
            c += 1
    else:
        for c in range(n_chunks):
            s = _walk_step(s, c, h_at, args, snap_args, HV, DK, DV, BK, PREC, HAS_SNAP)
    tl.store(slot_ptrs, s.to(state_ptr.dtype.element_ty), mask=s_mask)


@triton.jit
def _walk_step(s, c, h_at, args, snap_args, HV: tl.constexpr, DK: tl.constexpr,
               DV: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, HAS_SNAP: tl.constexpr):
    """Chunk c of the walk: its entering state to h, V' over U, the snapshot if due."""
    start, end, base, k_h, w_ptr, u_ptr, g_ptr, rk_h, s_kt, offs_k, offs_v = args
    h_ptr, first, h_tile, i_hv = h_at
    s = _walk_chunk(s, c, start, end, base, k_h, w_ptr, u_ptr, g_ptr, rk_h,
                    h_ptr + ((first + c).to(tl.int64) * HV + i_hv) * DK * DV + h_tile, s_kt,
                    offs_k, offs_v, DK, DV, BK, PREC)
    if HAS_SNAP:
        state_ptr, snap, snap_at, length, s_ss, s_sh, i_hv, s_tile, s_mask = snap_args
        _snapshot(state_ptr, snap, snap_at, c, length, s, s_ss, s_sh, i_hv, s_tile, s_mask)
    return s


@triton.jit(do_not_specialize=["T", "B"])
def chunk_output_kernel(q_ptr, k_ptr, u_ptr, p_ptr, g_ptr, rq_ptr, rk_ptr, h_ptr, o_ptr, cu_ptr,
                        T, B, s_qt, s_qh, s_kt, s_kh, s_ot, s_oh, HV: tl.constexpr,
                        HK: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                        P_INLINE: tl.constexpr):
    """Grid (chunks, Hv, cdiv(dv, BV)): one chunk's outputs from the state entering it.
    P_INLINE: form P = causal(Qn Kn^T * D) here from q and k instead of loading it."""
    i_c, i_hv, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, end = chunk_bounds(cu_ptr, i_c, B, 64)
    if end <= start:
        return
    dt = h_ptr.dtype.element_ty
    i_hk = i_hv // (HV // HK)
    base = i_hv.to(tl.int64) * T
    r = tl.arange(0, 64)
    rows = start + r
    m = rows < end
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    v_ok = offs_v < DV
    h = tl.load(h_ptr + ((i_c.to(tl.int64) * HV + i_hv) * DK + offs_k[:, None]) * DV
                + offs_v[None, :], mask=(offs_k < DK)[:, None] & v_ok[None, :], other=0.0)
    q = _tile(q_ptr + i_hk * s_qh, rows, end, s_qt, offs_k, DK, BK == DK)
    g = tl.load(g_ptr + base + rows, mask=m, other=0.0)
    rq = tl.load(rq_ptr + i_hk.to(tl.int64) * T + rows, mask=m, other=0.0)
    if P_INLINE:
        k = _tile(k_ptr + i_hk * s_kh, rows, end, s_kt, offs_k, DK, BK == DK)
        rk = tl.load(rk_ptr + i_hk.to(tl.int64) * T + rows, mask=m, other=0.0)
        p = _attention(q, k, rq, rk, g, rows, m, dt, PREC)
    else:
        p = _tile(p_ptr + base * 64, rows, end, 64, r, 64, True)
    v_new = tl.load(u_ptr + (base + rows.to(tl.int64))[:, None] * DV + offs_v[None, :],
                    mask=m[:, None] & v_ok[None, :], other=0.0)
    o = tl.dot(q.to(dt), h, input_precision=PREC) * (rq * tl.exp(g))[:, None]
    o = tl.dot(p, v_new.to(dt), o, input_precision=PREC)
    tl.store(o_ptr + i_hv * s_oh + rows.to(tl.int64)[:, None] * s_ot + offs_v[None, :],
             o.to(o_ptr.dtype.element_ty), mask=m[:, None] & v_ok[None, :])


@triton.jit
def _attention(q, k, rq, rk, g, rows, m, dt: tl.constexpr, PREC: tl.constexpr):
    """P = causal(Qn Kn^T * D) of one chunk (as the prep kernel stores it), in dt; rows past
    the chunk's end (m false) are zero."""
    causal = (rows[:, None] >= rows[None, :]) & m[:, None]
    decay = tl.exp(tl.where(causal, g[:, None] - g[None, :], float("-inf")))
    qk = tl.dot(q.to(dt), tl.trans(k.to(dt)), input_precision=PREC)
    return (qk * rq[:, None] * rk[None, :] * decay).to(dt)
