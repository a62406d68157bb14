"""Triton kernel: Gated DeltaNet verify for speculative decoding — T draft tokens per sequence
over the state pool, which stays untouched; step t's state goes to intermediate_states[b, t].

One program per (sequence, value head, block of value columns) walks the T steps with the
state in registers; the gates (g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b)) and
the q / k L2 norm are fused as in kernels/gdn_decode.py, and value head j reads key head
j // (Hv // Hk). Trees: a step whose parent is not the previous step reloads its parent's state
from the intermediate buffer (written earlier by the same program), or the slot's for -1.

Reference: `gdn_gating_ref` + `gdn_verify_ref` (kernels/gdn_ref.py, kernels/verify_ref.py).
Arithmetic in float32 whatever the state dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.gdn_step import delta_step, gates, load_qk
from qnext.kernels.launch import MAX_GRID_YZ, check_device, check_verify_rows


@triton.jit
def _gdn_verify_kernel(q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, a_log_ptr, dt_bias_ptr, state_ptr,
                       slot_ptr, inter_ptr, parent_ptr, out_ptr,
                       s_qb, s_qt, s_qh, s_vb, s_vt, s_vh, s_ab, s_at, s_ss, s_sh,
                       s_ib, s_it, s_ih, s_pb, s_ob, s_ot, s_oh, scale, eps,
                       T: tl.constexpr, HV: tl.constexpr, HK: tl.constexpr,
                       DK: tl.constexpr, DV: tl.constexpr, S_SK: tl.constexpr,
                       S_IK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       L2NORM: tl.constexpr, TREE: tl.constexpr):
    # column blocks fastest, then heads (as gdn_decode: one sequence's state together)
    i_v = tl.program_id(0)
    i_hv = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    i_hk = i_hv // (HV // HK)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DK, offs_v < DV
    mask = mask_k[:, None] & mask_v[None, :]
    neg_a = -tl.exp(tl.load(a_log_ptr + i_hv).to(tl.float32))
    dt_bias = tl.load(dt_bias_ptr + i_hv).to(tl.float32)

    slot = tl.load(slot_ptr + i_b).to(tl.int64)
    cols = tl.arange(0, BV)[None, :] + (i_v * BV).to(tl.int64)  # 64-bit: gdn_decode's note
    slot_tile = state_ptr + slot * s_ss + i_hv * s_sh + offs_k[:, None] * S_SK + cols
    inter_tile = inter_ptr + i_b * s_ib + i_hv * s_ih + offs_k[:, None] * S_IK + cols
    s = tl.load(slot_tile, mask=mask, other=0.0).to(tl.float32)
    for t in range(T):
        if TREE:
            # clamped into [-1, t): a malformed tree reads a wrong state, never out of bounds
            p = tl.load(parent_ptr + i_b * s_pb + t).to(tl.int32)
            p = tl.maximum(tl.minimum(p, t - 1), -1)
            if p != t - 1:
                if p < 0:
                    s = tl.load(slot_tile, mask=mask, other=0.0).to(tl.float32)
                else:
                    s = tl.load(inter_tile + p * s_it, mask=mask, other=0.0).to(tl.float32)
        qk_off = i_b * s_qb + t * s_qt + i_hk * s_qh
        q = load_qk(q_ptr + qk_off, offs_k, mask_k, eps, L2NORM) * scale
        k = load_qk(k_ptr + qk_off, offs_k, mask_k, eps, L2NORM)
        v = tl.load(v_ptr + i_b * s_vb + t * s_vt + i_hv * s_vh + offs_v, mask=mask_v,
                    other=0.0).to(tl.float32)
        gate_off = i_b * s_ab + t * s_at + i_hv
        decay, beta = gates(a_ptr + gate_off, b_ptr + gate_off, neg_a, dt_bias)
        s, o = delta_step(s, q, k, v, decay, beta)
        tl.store(inter_tile + t * s_it, s.to(inter_ptr.dtype.element_ty), mask=mask)
        tl.store(out_ptr + i_b * s_ob + t * s_ot + i_hv * s_oh + offs_v,
                 o.to(out_ptr.dtype.element_ty), mask=mask_v)
        if TREE:
            tl.debug_barrier()  # the step's state is stored before a child reloads it


def gdn_verify(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
               b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, *,
               ssm_states: torch.Tensor, state_indices: torch.Tensor,
               intermediate_states: torch.Tensor, parents: torch.Tensor | None = None,
               scale: float | None = None, use_qk_l2norm: bool = True, eps: float = 1e-6,
               block_v: int = 64, num_warps: int = 4) -> torch.Tensor:
    """Verify T draft tokens per sequence. q, k [B, T, Hk, dk]; v [B, T, Hv, dv]; a, b
    [B, T, Hv] (raw gate inputs); A_log, dt_bias [Hv] float32; ssm_states [S, Hv, dk, dv] read
    at state_indices [B], never written; intermediate_states [B, T, Hv, dk, dv] (any float
    dtype, may be a strided view) receives step t's state at [:, t]; parents [B, T] int
    (None: chains), parents[b, t] in [-1, t), -1 = the committed state — not checked on the
    device (that would sync; out-of-range values are clamped). Returns o [B, T, Hv, dv] in
    v.dtype. block_v, num_warps: value columns a program and its warps (benchmarks)."""
    B, T, HK, DK = q.shape
    HV, DV = v.shape[2], v.shape[3]
    _check(q, k, v, a, b, A_log, dt_bias, ssm_states, state_indices, intermediate_states,
           parents)
    out = torch.empty((B, T, HV, DV), dtype=v.dtype, device=v.device)
    if B == 0 or T == 0:
        return out
    tree = parents is not None
    par = parents if tree else state_indices
    inter = intermediate_states
    grid = (triton.cdiv(DV, block_v), HV, B)
    _gdn_verify_kernel[grid](
        q, k, v, a, b, A_log, dt_bias, ssm_states, state_indices, inter, par, out,
        q.stride(0), q.stride(1), q.stride(2), v.stride(0), v.stride(1), v.stride(2),
        a.stride(0), a.stride(1), ssm_states.stride(0), ssm_states.stride(1),
        inter.stride(0), inter.stride(1), inter.stride(2), par.stride(0) if tree else 0,
        out.stride(0), out.stride(1), out.stride(2), DK**-0.5 if scale is None else scale, eps,
        T=T, HV=HV, HK=HK, DK=DK, DV=DV, S_SK=ssm_states.stride(2), S_IK=inter.stride(3),
        BK=triton.next_power_of_2(DK), BV=block_v, L2NORM=use_qk_l2norm, TREE=tree,
        num_warps=num_warps)
    return out


def _check(q, k, v, a, b, A_log, dt_bias, states, indices, inter, parents) -> None:
    if q.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q {tuple(q.shape)} must be [B, T, Hk, dk], v {tuple(v.shape)} "
                         "[B, T, Hv, dv]")
    B, T, HK, DK = q.shape
    HV, DV = v.shape[2], v.shape[3]
    if k.shape != q.shape or k.stride() != q.stride() or v.shape[:2] != (B, T):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} (same strides), v "
                         f"{tuple(v.shape)} must agree on B and T")
    if HV % HK or a.shape != (B, T, HV) or b.shape != (B, T, HV) or a.stride() != b.stride():
        raise ValueError(f"Hv={HV} must be a multiple of Hk={HK}; a, b must be [B, T, Hv] "
                         "with the same strides")
    if A_log.shape != (HV,) or dt_bias.shape != (HV,) or A_log.dtype != torch.float32 \
            or dt_bias.dtype != torch.float32:
        raise ValueError("A_log and dt_bias must be float32 [Hv]")
    if states.dim() != 4 or states.shape[1:] != (HV, DK, DV) or states.stride(3) != 1:
        raise ValueError(f"ssm_states {tuple(states.shape)} must be [S, {HV}, {DK}, {DV}] "
                         "with contiguous columns")
    if inter.shape != (B, T, HV, DK, DV) or inter.stride(4) != 1 \
            or not inter.is_floating_point():
        raise ValueError(f"intermediate_states {tuple(inter.shape)} must be a float "
                         f"[{B}, {T}, {HV}, {DK}, {DV}] with contiguous columns")
    for name, t in (("q", q), ("k", k), ("v", v), ("a", a)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
    if B > MAX_GRID_YZ:
        raise ValueError(f"batch {B} over {MAX_GRID_YZ} sequences a launch: split it")
    check_verify_rows(indices, parents, B, T)
    check_device("gdn_verify", q, k, v, a, b, A_log, dt_bias, states, indices, inter,
                 *(() if parents is None else (parents,)))
