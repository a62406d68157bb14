"""Triton kernel: Gated DeltaNet decode step (one token per sequence) over the state pool.

Fuses, per (sequence, value head, block of value columns): the gates (g = -exp(A_log) *
softplus(a + dt_bias), beta = sigmoid(b)), the q / k L2 norm, the recurrence on the slot's
state in place (decay, delta, write, read) and optionally a copy of the new state into a
snapshot slot (extra_buffer prefix caching); with `norm`, the GDN output norm too (gated
RMSNorm over each head's dv columns, `kernels/norm.py`'s `gated_rms_rows`: one program then
holds the whole head, BV >= dv), saving the norm's launch. Its gate, q / k and step helpers
(`softplus`, `gates`, `load_qk`, `delta_step`) serve the verify and chunked-prefill kernels
too. Grouped heads: value head j reads key head j // (Hv // Hk); q and k are never repeated in
memory.

Reference: `gdn_gating_ref` + `fused_recurrent_gated_delta_rule_ref` (kernels/gdn_ref.py).
State layout [S, Hv, dk, dv] like the pool; arithmetic in float32 whatever the state dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.launch import check_device
from qnext.kernels.norm import gated_rms_rows


@triton.jit
def softplus(x):
    """softplus with torch's threshold 20 (x itself above it), elementwise in float32."""
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def gates(a_ptr, b_ptr, neg_a, dt_bias):
    """Scalar decay exp(g) and beta of one (token, value head); neg_a = -exp(A_log)."""
    x = tl.load(a_ptr).to(tl.float32) + dt_bias
    return tl.exp(neg_a * softplus(x)), tl.sigmoid(tl.load(b_ptr).to(tl.float32))


@triton.jit
def l2_normalised(x, eps, L2NORM: tl.constexpr):
    """x / sqrt(sum(x²) + eps) when L2NORM, else x."""
    if L2NORM:
        x = x / tl.sqrt(tl.sum(x * x) + eps)
    return x


@triton.jit
def load_qk(ptr, offs_k, mask_k, eps, L2NORM: tl.constexpr):
    """One q or k head row in float32, L2-normalised when L2NORM."""
    x = tl.load(ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    return l2_normalised(x, eps, L2NORM)


@triton.jit
def delta_step(s, q, k, v, decay, beta):
    """One gated delta-rule step on a float32 state tile s [dk, BV] as loaded (not decayed):
    (the new tile, the output columns). o = decay·(sᵀq) + (k·q)·u equals (new tile)ᵀq, so both
    column sums read the loaded tile and the new one can be stored while o is still summed.
    The verify kernel takes the same steps (T decode steps and one verify agree to ~3e-6
    relative, no longer bit for bit: docs/perf/verify.md, 2026-11-29)."""
    kq = tl.sum(k * q)
    sk = tl.sum(s * k[:, None], axis=0)
    sq = tl.sum(s * q[:, None], axis=0)
    u = beta * (v - decay * sk)
    return s * decay + k[:, None] * u[None, :], decay * sq + kq * u


@triton.jit
def _gdn_decode_kernel(q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, state_ptr,
                       slot_ptr, snap_ptr, out_ptr, z_ptr, nw_ptr,
                       s_qb, s_qh, s_vb, s_vh, s_ab, s_ss, s_sh, s_ob, s_oh, s_zb, s_zh,
                       scale, eps, norm_eps,
                       HV: tl.constexpr, HK: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                       S_SK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       L2NORM: tl.constexpr, HAS_SNAP: tl.constexpr, GATED: tl.constexpr):
    # S_SK (the state's dk stride) a constant: the tile's 16 loads and stores take immediate
    # offsets from one address, and the kernel fits 128 registers (4 programs an SM, not 3 at
    # 162): docs/perf/gdn-decode.md, 2026-11-29
    i_b = tl.program_id(0).to(tl.int64)
    i_hv = tl.program_id(1).to(tl.int64)
    i_v = tl.program_id(2)
    i_hk = i_hv // (HV // HK)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DK, offs_v < DV

    # the state's 32 KB first (after its slot): the q / k norms' barriers would hold them back
    slot = tl.load(slot_ptr + i_b).to(tl.int64)
    tile = offs_k[:, None] * S_SK + offs_v[None, :]
    mask = mask_k[:, None] & mask_v[None, :]
    ptrs = state_ptr + slot * s_ss + i_hv * s_sh + tile
    s = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    qk_off = i_b * s_qb + i_hk * s_qh
    q = tl.load(q_ptr + qk_off + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + qk_off + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + i_b * s_vb + i_hv * s_vh + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    neg_a = -tl.exp(tl.load(a_log_ptr + i_hv).to(tl.float32))
    dt_bias = tl.load(dt_bias_ptr + i_hv).to(tl.float32)
    gate_off = i_b * s_ab + i_hv
    decay, beta = gates(a_ptr + gate_off, b_ptr + gate_off, neg_a, dt_bias)
    q = l2_normalised(q, eps, L2NORM) * scale
    k = l2_normalised(k, eps, L2NORM)
    s, o = delta_step(s, q, k, v, decay, beta)
    tl.store(ptrs, s.to(state_ptr.dtype.element_ty), mask=mask)
    if HAS_SNAP:
        snap = tl.load(snap_ptr + i_b).to(tl.int64)
        if snap >= 0:
            tl.store(state_ptr + snap * s_ss + i_hv * s_sh + tile,
                     s.to(state_ptr.dtype.element_ty), mask=mask)
    o = o.to(out_ptr.dtype.element_ty)[None, :]  # where the unfused kernel stores it
    if GATED:
        z = tl.load(z_ptr + i_b * s_zb + i_hv * s_zh + offs_v, mask=mask_v, other=0.0)
        o = gated_rms_rows(o, z[None, :], nw_ptr, offs_v, DV, norm_eps)
    tl.store(out_ptr + i_b * s_ob + i_hv * s_oh + offs_v[None, :],
             o.to(out_ptr.dtype.element_ty), mask=mask_v[None, :])


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
    z, weight, norm_eps = norm if norm is not None else (v, A_log, 0.0)
    if norm is not None:
        _check_norm(v, z, weight)
        block_v, num_warps = triton.next_power_of_2(DV), 8  # the whole head a program
    out = torch.empty_like(v)
    if B == 0:
        return out
    grid = (B, HV, triton.cdiv(DV, block_v))
    snaps = snapshot_slots if snapshot_slots is not None else state_indices
    _gdn_decode_kernel[grid](
        q, k, v, a, b, A_log, dt_bias, ssm_states, state_indices, snaps, out, z, weight,
        q.stride(0), q.stride(1), v.stride(0), v.stride(1), a.stride(0),
        ssm_states.stride(0), ssm_states.stride(1), out.stride(0), out.stride(1),
        z.stride(0), z.stride(1), DK**-0.5 if scale is None else scale, eps, norm_eps,
        HV=HV, HK=HK, DK=DK, DV=DV, S_SK=ssm_states.stride(2), BK=triton.next_power_of_2(DK),
        BV=block_v, L2NORM=use_qk_l2norm, HAS_SNAP=snapshot_slots is not None,
        GATED=norm is not None, num_warps=num_warps)
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
    check_device("gdn_decode", q, k, v, a, b, states, indices)
