"""Triton kernel: the sequential stage of the chunked gated-delta-rule prefill, outputs fused.

One program per (block of value columns, value head, sequence) walks the sequence's chunks of
64 tokens in order with the state S [dk, BV] in float32 registers. Per chunk, from the
workspaces of kernels/gdn_chunk_prep.py (W, U, P, G, rq, rk) and the raw q, k:
  V' = U - W S
  O  = diag(rq exp(G)) Q S + P V'                      (rq: L2 norm and scale of q)
  S <- exp(G_last) S + K^T diag(rk exp(G_last - G)) V'
then writes the final state to the sequence's slot and, if asked, the state after the chunk
that ends at the snapshot offset to the snapshot slot. Dots take operands in the dtype of the
W workspace (S and V' rounded to it) with float32 accumulation.
Reference: `_chunked_sequence` / `chunk_gated_delta_rule_ref` in kernels/gdn_ref.py.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(ptr, rows, end, width, cols, NC: tl.constexpr, FULL: tl.constexpr):
    """Rows `rows` (< end) and columns `cols` (< NC unless FULL: then no column mask, which
    keeps the loads vectorised) of a row-major [*, width] matrix."""
    mask = (rows < end)[:, None]
    if not FULL:
        mask = mask & (cols < NC)[None, :]
    return tl.load(ptr + rows.to(tl.int64)[:, None] * width + cols[None, :], mask=mask,
                   other=0.0)


@triton.jit
def _chunk(s, c, start, end, base, q_h, k_h, w_ptr, u_ptr, p_ptr, g_ptr, rq_h, rk_h, o_h,
           s_qt, s_kt, s_ot, offs_k, offs_v, DK: tl.constexpr, DV: tl.constexpr,
           BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """One chunk: writes its outputs, returns the state after it."""
    dt = w_ptr.dtype.element_ty  # the dot operand dtype
    r = tl.arange(0, 64)
    rows = start + c * 64 + r
    last = tl.minimum(start + c * 64 + 64, end) - 1
    m = rows < end
    full_k: tl.constexpr = BK == DK
    full_v: tl.constexpr = DV % BV == 0
    w = _tile(w_ptr + base * DK, rows, end, DK, offs_k, DK, full_k)
    u = _tile(u_ptr + base * DV, rows, end, DV, offs_v, DV, full_v).to(tl.float32)
    q = _tile(q_h, rows, end, s_qt, offs_k, DK, full_k)
    k = _tile(k_h, rows, end, s_kt, offs_k, DK, full_k)
    p = _tile(p_ptr + base * 64, rows, end, 64, r, 64, True)
    g = tl.load(g_ptr + base + rows, mask=m, other=0.0)
    g_last = tl.load(g_ptr + base + last)
    sd = s.to(dt)
    v_new = u - tl.dot(w, sd, input_precision=PREC)
    q_scale = tl.load(rq_h + rows, mask=m, other=0.0) * tl.exp(g)
    o = tl.dot(q.to(dt), sd, input_precision=PREC) * q_scale[:, None]
    o = tl.dot(p, v_new.to(dt), o, input_precision=PREC)
    o_mask = m[:, None]
    if not full_v:
        o_mask = o_mask & (offs_v < DV)[None, :]
    tl.store(o_h + rows.to(tl.int64)[:, None] * s_ot + offs_v[None, :],
             o.to(o_h.dtype.element_ty), mask=o_mask)
    k_decay = tl.load(rk_h + rows, mask=m, other=0.0) * tl.exp(g_last - g)
    v_k = (v_new * k_decay[:, None]).to(dt)
    return s * tl.exp(g_last) + tl.dot(tl.trans(k.to(dt)), v_k, input_precision=PREC)


@triton.jit(do_not_specialize=["T", "HV", "HK"])
def chunk_scan_kernel(q_ptr, k_ptr, w_ptr, u_ptr, p_ptr, g_ptr, rq_ptr, rk_ptr, o_ptr,
                      state_ptr, cu_ptr, slot_ptr, init_ptr, snap_ptr, snap_at_ptr,
                      T, s_qt, s_qh, s_kt, s_kh, s_ot, s_oh, s_ss, s_sh, s_sk,
                      HV, HK, DK: tl.constexpr, DV: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                      HAS_SNAP: tl.constexpr, WHILE_LOOP: tl.constexpr):
    """Grid (cdiv(dv, BV), Hv, B); see the module docstring. WHILE_LOOP: loop over the chunks
    with `while` (Triton's CPU interpreter cannot take a tensor bound in `range`)."""
    i_v, i_hv, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(cu_ptr + i_b).to(tl.int32)
    end = tl.load(cu_ptr + i_b + 1).to(tl.int32)
    if end <= start:
        return
    i_hk = i_hv // (HV // HK)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    s, slot_ptrs, s_tile, s_mask, snap, snap_at = initial_state(
        state_ptr, slot_ptr, init_ptr, snap_ptr, snap_at_ptr, i_b, i_hv, offs_k, offs_v, s_ss,
        s_sh, s_sk, DK, DV, BK, BV, HAS_SNAP)
    n_chunks = tl.cdiv(end - start, 64)
    args = (start, end, i_hv.to(tl.int64) * T, q_ptr + i_hk * s_qh, k_ptr + i_hk * s_kh,
            w_ptr, u_ptr, p_ptr, g_ptr, rq_ptr + i_hk.to(tl.int64) * T,
            rk_ptr + i_hk.to(tl.int64) * T, o_ptr + i_hv * s_oh, s_qt, s_kt, s_ot,
            offs_k, offs_v)
    if WHILE_LOOP:
        c = 0
        while c < n_chunks:
            s = _chunk(s, c, *args, DK, DV, BK, BV, PREC)
            if HAS_SNAP:
                _snapshot(state_ptr, snap, snap_at, c, end - start, s, s_ss, s_sh, i_hv,
                          s_tile, s_mask)
            c += 1
    else:
        for c in range(n_chunks):
            s = _chunk(s, c, *args, DK, DV, BK, BV, PREC)
            if HAS_SNAP:
                _snapshot(state_ptr, snap, snap_at, c, end - start, s, s_ss, s_sh, i_hv,
                          s_tile, s_mask)
    tl.store(slot_ptrs, s.to(state_ptr.dtype.element_ty), mask=s_mask)


@triton.jit
def initial_state(state_ptr, slot_ptr, init_ptr, snap_ptr, snap_at_ptr, i_b, i_hv, offs_k,
                  offs_v, s_ss, s_sh, s_sk, DK: tl.constexpr, DV: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, HAS_SNAP: tl.constexpr):
    """A program's state tile (zeros, or read from sequence i_b's slot), where it goes back,
    and the sequence's snapshot slot and offset (-1, 0 without)."""
    s_tile = offs_k[:, None] * s_sk + offs_v[None, :]
    s_mask = (offs_k < DK)[:, None] & (offs_v < DV)[None, :]
    slot_ptrs = state_ptr + tl.load(slot_ptr + i_b).to(tl.int64) * s_ss + i_hv * s_sh + s_tile
    s = tl.zeros([BK, BV], dtype=tl.float32)
    if tl.load(init_ptr + i_b) != 0:
        s = tl.load(slot_ptrs, mask=s_mask, other=0.0).to(tl.float32)
    snap = -1
    snap_at = 0
    if HAS_SNAP:
        snap = tl.load(snap_ptr + i_b).to(tl.int64)
        snap_at = tl.load(snap_at_ptr + i_b).to(tl.int32)
    return s, slot_ptrs, s_tile, s_mask, snap, snap_at


@triton.jit
def _snapshot(state_ptr, snap, snap_at, c, length, s, s_ss, s_sh, i_hv, s_tile, s_mask):
    """The state after chunk c into the snapshot slot when that chunk ends at snap_at."""
    if (snap >= 0) & (tl.minimum(c * 64 + 64, length) == snap_at):
        tl.store(state_ptr + snap * s_ss + i_hv * s_sh + s_tile,
                 s.to(state_ptr.dtype.element_ty), mask=s_mask)
