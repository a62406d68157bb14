"""Triton kernels: Gated DeltaNet decode step (one token per sequence) over the state pool.

Fuses, per (sequence, value head, block of value columns): the gates (g = -exp(A_log) *
softplus(a + dt_bias), beta = sigmoid(b)), the q / k L2 norm, the recurrence on the slot's
state in place (decay, delta, write, read) and optionally a copy of the new state into a
snapshot slot (extra_buffer prefix caching). With `norm`, the GDN output norm too (gated
RMSNorm over each head's dv columns) in a second kernel whose program takes a whole head: it
walks the head's column blocks in turn, one state tile in registers at a time, and normalises
after the last (as fast as the plain kernel, where a one-tile head took 1.5x its time at
B >= 16: docs/perf/gdn-decode.md, 2026-11-29, thirteenth session). The step helpers live in
`gdn_step.py`. Grouped heads: value head j reads key head j // (Hv // Hk); q and k are never
repeated in memory.

Reference: `gdn_gating_ref` + `fused_recurrent_gated_delta_rule_ref` (kernels/gdn_ref.py).
State layout [S, Hv, dk, dv] like the pool; arithmetic in float32 whatever the state dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.gdn_step import delta_step, gates, l2_normalised
from qnext.kernels.launch import MAX_GRID_YZ, check_device
from qnext.kernels.norm import gated_scaled


@triton.jit
def _token_inputs(q_ptr, k_ptr, a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, i_b, i_hv, s_qb, s_qh,
                  s_ab, offs_k, mask_k, HV: tl.constexpr, HK: tl.constexpr):
    """Token i_b's q and k rows of value head i_hv's key head (float32, not yet normalised:
    the norms' barriers go after every load) and its decay and beta."""
    qk_off = i_b * s_qb + (i_hv // (HV // HK)) * s_qh
    q = tl.load(q_ptr + qk_off + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + qk_off + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    neg_a = -tl.exp(tl.load(a_log_ptr + i_hv).to(tl.float32))
    dt_bias = tl.load(dt_bias_ptr + i_hv).to(tl.float32)
    gate_off = i_b * s_ab + i_hv
    decay, beta = gates(a_ptr + gate_off, b_ptr + gate_off, neg_a, dt_bias)
    return q, k, decay, beta


@triton.jit
def _store_state(head, slot_row, snap_ptr, i_b, s_ss, at, s, mask, HAS_SNAP: tl.constexpr):
    """The new tile s at `at` (offsets within a head) of the slot's head, and of the snapshot
    slot's when HAS_SNAP and the sequence has one (>= 0); head: the head in slot 0."""
    s = s.to(head.dtype.element_ty)
    tl.store(slot_row + at, s, mask=mask)
    if HAS_SNAP:
        snap = tl.load(snap_ptr + i_b).to(tl.int64)
        if snap >= 0:
            tl.store(head + snap * s_ss + at, s, mask=mask)


@triton.jit
def _gdn_decode_kernel(q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, state_ptr,
                       slot_ptr, snap_ptr, out_ptr, s_qb, s_qh, s_vb, s_vh, s_ab, s_ss, s_sh,
                       s_ob, s_oh, scale, eps,
                       HV: tl.constexpr, HK: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                       S_SK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       L2NORM: tl.constexpr, HAS_SNAP: tl.constexpr):
    # S_SK (the state's dk stride) a constant: the tile's 16 loads and stores take immediate
    # offsets from one address, and the kernel fits 128 registers (4 programs an SM, not 3 at
    # 162). Column blocks vary fastest, then heads: programs running together cover one
    # sequence's state contiguously (DRAM locality; 2-3 % faster at B >= 64): docs/perf/
    # gdn-decode.md, 2026-11-29 (thirteenth session)
    i_v = tl.program_id(0)
    i_hv = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DK, offs_v < DV
    mask = mask_k[:, None] & mask_v[None, :]
    # the state's 32 KB first (after its slot): the q / k norms' barriers would hold them back;
    # the column offset in 64 bits: (i_v·BV + column) in 32 bits could overflow for all the
    # compiler knows of program_id(0), which costs the immediate offsets
    at = offs_k[:, None] * S_SK + tl.arange(0, BV)[None, :] + (i_v * BV).to(tl.int64)
    head = state_ptr + i_hv * s_sh
    slot_row = head + tl.load(slot_ptr + i_b).to(tl.int64) * s_ss
    s = tl.load(slot_row + at, mask=mask, other=0.0).to(tl.float32)
    q, k, decay, beta = _token_inputs(q_ptr, k_ptr, a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, i_b,
                                      i_hv, s_qb, s_qh, s_ab, offs_k, mask_k, HV, HK)
    v = tl.load(v_ptr + i_b * s_vb + i_hv * s_vh + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    q = l2_normalised(q, eps, L2NORM) * scale
    k = l2_normalised(k, eps, L2NORM)
    s, o = delta_step(s, q, k, v, decay, beta)
    _store_state(head, slot_row, snap_ptr, i_b, s_ss, at, s, mask, HAS_SNAP)
    tl.store(out_ptr + i_b * s_ob + i_hv * s_oh + offs_v, o.to(out_ptr.dtype.element_ty),
             mask=mask_v)


@triton.jit
def _gdn_decode_norm_kernel(q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, a_log_ptr, dt_bias_ptr,
                            state_ptr, slot_ptr, snap_ptr, out_ptr, z_ptr, nw_ptr,
                            s_qb, s_qh, s_vb, s_vh, s_ab, s_ss, s_sh, s_ob, s_oh, s_zb, s_zh,
                            scale, eps, norm_eps,
                            HV: tl.constexpr, HK: tl.constexpr, DK: tl.constexpr,
                            DV: tl.constexpr, S_SK: tl.constexpr, BK: tl.constexpr,
                            BV: tl.constexpr, L2NORM: tl.constexpr, HAS_SNAP: tl.constexpr):
    """The step with the gated output norm: a program a (value head, sequence), heads fastest;
    the head's column blocks in turn (the next tile loaded after the last one's store, so one
    tile's registers), the outputs kept until the norm's sum of squares is whole."""
    i_hv = tl.program_id(0).to(tl.int64)
    i_b = tl.program_id(1).to(tl.int64)
    offs_k = tl.arange(0, BK)
    cols = tl.arange(0, BV)
    mask_k = offs_k < DK
    at = offs_k[:, None] * S_SK + cols[None, :]
    head = state_ptr + i_hv * s_sh
    slot_row = head + tl.load(slot_ptr + i_b).to(tl.int64) * s_ss
    s = tl.load(slot_row + at, mask=mask_k[:, None] & (cols[None, :] < DV), other=0.0)
    q, k, decay, beta = _token_inputs(q_ptr, k_ptr, a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, i_b,
                                      i_hv, s_qb, s_qh, s_ab, offs_k, mask_k, HV, HK)
    q = l2_normalised(q, eps, L2NORM) * scale
    k = l2_normalised(k, eps, L2NORM)
    squares = 0.0
    outs = ()
    for j in tl.static_range(triton.cdiv(DV, BV)):
        mask_v = j * BV + cols < DV
        mask = mask_k[:, None] & mask_v[None, :]
        if j > 0:
            s = tl.load(slot_row + at + j * BV, mask=mask, other=0.0)
        v = tl.load(v_ptr + i_b * s_vb + i_hv * s_vh + j * BV + cols, mask=mask_v, other=0.0)
        s, o = delta_step(s.to(tl.float32), q, k, v.to(tl.float32), decay, beta)
        _store_state(head, slot_row, snap_ptr, i_b, s_ss, at + j * BV, s, mask, HAS_SNAP)
        o = o.to(out_ptr.dtype.element_ty)  # rounded where the unfused kernel stores it
        squares += tl.sum(o.to(tl.float32) * o.to(tl.float32))
        outs = outs + (o,)
    rstd = 1.0 / tl.sqrt(squares / DV + norm_eps)
    for j in tl.static_range(triton.cdiv(DV, BV)):
        offs_v = j * BV + cols
        z = tl.load(z_ptr + i_b * s_zb + i_hv * s_zh + offs_v, mask=offs_v < DV, other=0.0)
        y = gated_scaled(outs[j], rstd, z, nw_ptr, offs_v, DV)
        tl.store(out_ptr + i_b * s_ob + i_hv * s_oh + offs_v, y.to(out_ptr.dtype.element_ty),
                 mask=offs_v < DV)


def gdn_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
               b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, *,
               ssm_states: torch.Tensor, state_indices: torch.Tensor,
               snapshot_slots: torch.Tensor | None = None, scale: float | None = None,
               use_qk_l2norm: bool = True, eps: float = 1e-6, block_v: int = 64,
               num_warps: int = 4, norm: tuple | None = None) -> torch.Tensor:
    """One decode step. q, k [B, Hk, dk]; v [B, Hv, dv]; a, b [B, Hv] (raw gate inputs);
    A_log, dt_bias [Hv] float32; ssm_states [S, Hv, dk, dv] (updated in place at the distinct
    state_indices [B]); snapshot_slots [B] (-1: none) also receive the new state.
    Returns o [B, Hv, dv] in v.dtype; with norm = (z, weight, eps) — z [B, Hv, dv] in v.dtype,
    contiguous heads, weight [dv] — `gated_rms_norm(o, z, weight, eps)` of it instead."""
    B, HK, DK = q.shape
    HV, DV = v.shape[1], v.shape[2]
    _check(q, k, v, a, b, A_log, dt_bias, ssm_states, state_indices, snapshot_slots)
    out = torch.empty_like(v)
    if norm is not None:
        z, weight, norm_eps = norm
        _check_norm(v, z, weight)
    if B == 0:
        return out
    snaps = snapshot_slots if snapshot_slots is not None else state_indices
    args = (q, k, v, a, b, A_log, dt_bias, ssm_states, state_indices, snaps, out)
    strides = (q.stride(0), q.stride(1), v.stride(0), v.stride(1), a.stride(0),
               ssm_states.stride(0), ssm_states.stride(1), out.stride(0), out.stride(1))
    consts = dict(HV=HV, HK=HK, DK=DK, DV=DV, S_SK=ssm_states.stride(2),
                  BK=triton.next_power_of_2(DK), BV=block_v, L2NORM=use_qk_l2norm,
                  HAS_SNAP=snapshot_slots is not None, num_warps=num_warps)
    scale = DK**-0.5 if scale is None else scale
    if norm is None:
        _gdn_decode_kernel[(triton.cdiv(DV, block_v), HV, B)](*args, *strides, scale, eps,
                                                              **consts)
    else:
        _gdn_decode_norm_kernel[(HV, B)](*args, z, weight, *strides, z.stride(0), z.stride(1),
                                         scale, eps, norm_eps, **consts)
    return out


def _check_norm(v: torch.Tensor, z: torch.Tensor, weight: torch.Tensor) -> None:
    if z.shape != v.shape or z.dtype != v.dtype or z.stride(2) != 1:
        raise ValueError(f"norm z {tuple(z.shape)} {z.dtype} must be v's shape and dtype "
                         f"{tuple(v.shape)} {v.dtype}, contiguous in dv")
    if weight.shape != (v.shape[2],):
        raise ValueError(f"norm weight {tuple(weight.shape)} must be [dv = {v.shape[2]}]")
    check_device("gdn_decode", z, weight)


def _check(q, k, v, a, b, A_log, dt_bias, states, indices, snaps) -> None:
    B, HK, DK = q.shape
    HV, DV = v.shape[1], v.shape[2]
    if k.shape != q.shape or k.stride() != q.stride() or v.shape[0] != B:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} (same strides), v "
                         f"{tuple(v.shape)} must agree on B and heads")
    if HV % HK or a.shape != (B, HV) or b.shape != (B, HV) or a.stride() != b.stride():
        raise ValueError(f"Hv={HV} must be a multiple of Hk={HK}; a, b must be [B, Hv]")
    if A_log.shape != (HV,) or dt_bias.shape != (HV,) or A_log.dtype != torch.float32 \
            or dt_bias.dtype != torch.float32:
        raise ValueError("A_log and dt_bias must be float32 [Hv]")
    if states.shape[1:] != (HV, DK, DV) or states.stride(3) != 1:
        raise ValueError(f"ssm_states {tuple(states.shape)} must be [S, {HV}, {DK}, {DV}] with "
                         "contiguous columns")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(2) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
    if indices.shape != (B,) or (snaps is not None and snaps.shape != (B,)):
        raise ValueError("state_indices (and snapshot_slots) must be [B]")
    if B > MAX_GRID_YZ:
        raise ValueError(f"batch {B} over {MAX_GRID_YZ} sequences a launch: split it")
    check_device("gdn_decode", q, k, v, a, b, states, indices)
