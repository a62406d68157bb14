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
def _k_rows_t(k_h, rows, m, s_kt, cols, DK: tl.constexpr):
    """K^T [cols, 64 rows]: loaded transposed, so no register transpose precedes the dot."""
    return tl.load(k_h + rows.to(tl.int64)[None, :] * s_kt + cols[:, None],
                   mask=m[None, :] & (cols < DK)[:, None], other=0.0)


@triton.jit
def _walk_chunk(s1, s2, c, start, end, base, k_h, w_h, u_ptr, g_ptr, rk_h, h_at, s_kt,
                offs_k, offs_v, DK: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr,
                TWO: tl.constexpr, FULL_K: tl.constexpr, PREC: tl.constexpr):
    """Chunk c: stores the state entering it at h_at and V' over U; returns the state after
    it, as its row pieces s1 = S[:KP] and (TWO) s2 = S[KP:2 KP]. FULL_K: the pieces cover
    dk exactly (W's loads need no column mask)."""
    dt = w_h.dtype.element_ty
    rows = start + c * 64 + tl.arange(0, 64)
    last = tl.minimum(start + c * 64 + 64, end) - 1
    m = rows < end
    v_ok = (offs_v < DV)[None, :]
    tl.store(h_at, s1.to(dt), mask=(offs_k < DK)[:, None] & v_ok)
    v_new = tl.dot(_tile(w_h, rows, end, DK, offs_k, DK, FULL_K), s1.to(dt),
                   input_precision=PREC)
    if TWO:
        tl.store(h_at + KP * DV, s2.to(dt), mask=(offs_k + KP < DK)[:, None] & v_ok)
        v_new = tl.dot(_tile(w_h, rows, end, DK, offs_k + KP, DK, FULL_K), s2.to(dt), v_new,
                       input_precision=PREC)
    u_at = u_ptr + (base + rows.to(tl.int64))[:, None] * DV + offs_v[None, :]
    v_new = tl.load(u_at, mask=m[:, None] & v_ok, other=0.0).to(tl.float32) - v_new
    tl.store(u_at, v_new.to(dt), mask=m[:, None] & v_ok)
    g = tl.load(g_ptr + base + rows, mask=m, other=0.0)
    g_last = tl.load(g_ptr + base + last)
    k_decay = tl.load(rk_h + rows, mask=m, other=0.0) * tl.exp(g_last - g)
    v_k = (v_new * k_decay[:, None]).to(dt)
    decay = tl.exp(g_last)
    s1 = tl.dot(_k_rows_t(k_h, rows, m, s_kt, offs_k, DK).to(dt), v_k, s1 * decay,
                input_precision=PREC)
    if TWO:
        s2 = tl.dot(_k_rows_t(k_h, rows, m, s_kt, offs_k + KP, DK).to(dt), v_k, s2 * decay,
                    input_precision=PREC)
    return s1, s2


@triton.jit(do_not_specialize=["T", "B", "HV", "HK"])
def chunk_state_kernel(k_ptr, w_ptr, u_ptr, g_ptr, rk_ptr, h_ptr, state_ptr, cu_ptr, slot_ptr,
                       init_ptr, snap_ptr, snap_at_ptr, T, B, s_kt, s_kh, s_ss, s_sh, s_sk,
                       HV, HK, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr,
                       BV: tl.constexpr, PREC: tl.constexpr, HAS_SNAP: tl.constexpr,
                       WHILE_LOOP: tl.constexpr):
    """Grid (cdiv(dv, BV), Hv, B): the walk over one sequence's chunks (see the docstring).
    A 128-row state is held as two 64-row pieces (each dot then takes 64-deep operands, and
    32-column programs compile right; docs/perf/gdn-prefill.md). WHILE_LOOP: for Triton's CPU
    interpreter (no tensor bound in `range`); on the GPU the `range` loop lets Triton
    pipeline the next chunk's loads."""
    i_v, i_hv, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(cu_ptr + i_b).to(tl.int32)
    end = tl.load(cu_ptr + i_b + 1).to(tl.int32)
    if end <= start:
        return
    TWO: tl.constexpr = BK == 128
    KP: tl.constexpr = 64 if TWO else BK
    first = chunks_before(cu_ptr, i_b, 64)
    offs_k = tl.arange(0, KP)
    offs_v = i_v * BV + tl.arange(0, BV)
    init = (state_ptr, slot_ptr, init_ptr, snap_ptr, snap_at_ptr, i_b, i_hv)
    s1, slots1, tile1, mask1, snap, snap_at = initial_state(
        *init, offs_k, offs_v, s_ss, s_sh, s_sk, DK, DV, KP, BV, HAS_SNAP)
    s2, slots2, tile2, mask2 = s1, slots1, tile1, mask1
    if TWO:
        s2, slots2, tile2, mask2, snap, snap_at = initial_state(
            *init, offs_k + KP, offs_v, s_ss, s_sh, s_sk, DK, DV, KP, BV, HAS_SNAP)
    i_hk = i_hv // (HV // HK)
    base = i_hv.to(tl.int64) * T
    h_hv = h_ptr + i_hv * DK * DV + offs_k[:, None] * DV + offs_v[None, :]
    args = (start, end, base, k_ptr + i_hk * s_kh, w_ptr + base * DK, u_ptr, g_ptr,
            rk_ptr + i_hk.to(tl.int64) * T)
    snaps = (state_ptr, snap, snap_at, end - start, s_ss, s_sh, i_hv)
    n_chunks = tl.cdiv(end - start, 64)
    h_step = HV * DK * DV
    kept = (tile1, mask1, tile2, mask2)  # no constexpr in a tuple: Triton 3.6 rejects it
    if WHILE_LOOP:
        c = 0
        while c < n_chunks:
            s1, s2 = _walk_chunk(s1, s2, c, *args, h_hv + (first + c).to(tl.int64) * h_step,
                                 s_kt, offs_k, offs_v, DK, DV, KP, TWO, BK == DK, PREC)
            _snapshots(snaps, c, s1, s2, *kept, TWO, HAS_SNAP)
            c += 1
    else:
        for c in range(n_chunks):
            s1, s2 = _walk_chunk(s1, s2, c, *args, h_hv + (first + c).to(tl.int64) * h_step,
                                 s_kt, offs_k, offs_v, DK, DV, KP, TWO, BK == DK, PREC)
            _snapshots(snaps, c, s1, s2, *kept, TWO, HAS_SNAP)
    tl.store(slots1, s1.to(state_ptr.dtype.element_ty), mask=mask1)
    if TWO:
        tl.store(slots2, s2.to(state_ptr.dtype.element_ty), mask=mask2)


@triton.jit
def _snapshots(snaps, c, s1, s2, tile1, mask1, tile2, mask2, TWO: tl.constexpr,
               HAS_SNAP: tl.constexpr):
    """The snapshot after chunk c, if due, piece by piece."""
    if HAS_SNAP:
        state_ptr, snap, snap_at, length, s_ss, s_sh, i_hv = snaps
        _snapshot(state_ptr, snap, snap_at, c, length, s1, s_ss, s_sh, i_hv, tile1, mask1)
        if TWO:
            _snapshot(state_ptr, snap, snap_at, c, length, s2, s_ss, s_sh, i_hv, tile2, mask2)


@triton.jit(do_not_specialize=["T", "B", "HV", "HK"])
def chunk_output_kernel(q_ptr, k_ptr, u_ptr, p_ptr, g_ptr, rq_ptr, rk_ptr, h_ptr, o_ptr, cu_ptr,
                        T, B, s_qt, s_qh, s_kt, s_kh, s_ot, s_oh, HV, HK,
                        DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr,
                        BV: tl.constexpr, PREC: tl.constexpr, P_INLINE: tl.constexpr):
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
