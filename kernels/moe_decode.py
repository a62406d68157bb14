"""Triton kernels: the fused MoE for a few tokens (decode), two launches and no alignment.

With T·k assignments in the tens, `fused_moe`'s sort-and-align path (kernels/moe.py) spends
more time launching its count / align / combine kernels than streaming the experts' weights
(2.4× the weight-bytes floor at T = 1, docs/perf/moe.md). Here:
  1. one program per (assignment, tile of I): x[t] · w13[e] for the gate and up rows of the
     tile, SwiGLU -> the intermediate row of the assignment (x.dtype);
  2. one program per (token, tile of H): for each of the token's k assignments in slot order,
     w2[e] · intermediate, times the routing weight, rounded to x.dtype (as the reference and
     the aligned path round each assignment's row), summed in float32 — deterministic, no
     atomics; ids outside [0, E) contribute nothing.
Products are GEMVs on CUDA cores (float32 FMAs of the operands), which is what T this small
needs: every weight element is used by one assignment. `fused_moe` takes this path for
T <= DECODE_TOKENS unless given tiles. Reference: `fused_moe_ref` (kernels/moe_ref.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DECODE_TOKENS = 4  # T up to which fused_moe uses this path (to be tuned on the GPU)


@triton.jit
def _gemv_tile(w_ptrs, v_ptrs, rows_ok, ok, BN: tl.constexpr, BK: tl.constexpr,
               K: tl.constexpr):
    """sum over K of w[rows, :] * v[:] (float32), the [BN, K] tile read in BK-wide steps;
    nothing is read where `ok` is false."""
    offs_k = tl.arange(0, BK)
    acc = tl.zeros([BN], tl.float32)
    for k0 in range(0, K, BK):
        k_ok = (offs_k < K - k0) & ok
        v = tl.load(v_ptrs + k0 + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptrs + k0 + offs_k[None, :], mask=rows_ok[:, None] & k_ok[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(w * v[None, :], 1)
    return acc


@triton.jit
def _gate_up_kernel(x_ptr, w_ptr, ids_ptr, inter_ptr, E, s_xt, s_we, s_wn,
                    H: tl.constexpr, I: tl.constexpr, TOPK: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr):
    a = tl.program_id(0).to(tl.int64)
    e = tl.load(ids_ptr + a).to(tl.int64)
    if (e < 0) | (e >= E):
        return
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    n_ok = offs_n < I
    x_ptrs = x_ptr + (a // TOPK) * s_xt
    g_ptrs = w_ptr + e * s_we + offs_n[:, None].to(tl.int64) * s_wn
    gate = _gemv_tile(g_ptrs, x_ptrs, n_ok, e >= 0, BN, BK, H)
    up = _gemv_tile(g_ptrs + I * s_wn, x_ptrs, n_ok, e >= 0, BN, BK, H)
    act = gate * tl.sigmoid(gate) * up
    tl.store(inter_ptr + a * I + offs_n, act.to(inter_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _down_kernel(inter_ptr, w_ptr, ids_ptr, tw_ptr, out_ptr, E, s_we, s_wn, s_tw, s_ot,
                 H: tl.constexpr, I: tl.constexpr, TOPK: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    n_ok = offs_n < H
    total = tl.zeros([BN], tl.float32)
    for j in tl.static_range(TOPK):
        a = t * TOPK + j
        e = tl.load(ids_ptr + a).to(tl.int64)
        ok = (e >= 0) & (e < E)
        w_ptrs = w_ptr + tl.where(ok, e, 0) * s_we + offs_n[:, None].to(tl.int64) * s_wn
        acc = _gemv_tile(w_ptrs, inter_ptr + a * I, n_ok, ok, BN, BK, I)
        weight = tl.load(tw_ptr + t * s_tw + j).to(tl.float32)
        row = (acc * weight).to(out_ptr.dtype.element_ty).to(tl.float32)
        total += tl.where(ok, row, 0.0)
    tl.store(out_ptr + t * s_ot + offs_n, total.to(out_ptr.dtype.element_ty), mask=n_ok)


def fused_moe_decode(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                     topk_weights: torch.Tensor, topk_ids: torch.Tensor, block_n: int = 16,
                     block_k: int = 256, num_warps: int = 4) -> torch.Tensor:
    """`fused_moe`'s contract (inputs already checked there; any T works, few is the point):
    block_n rows of the weights and block_k columns per step of each program."""
    (T, H), (E, I2, _), k = x.shape, w13.shape, topk_ids.shape[1]
    I = I2 // 2
    out = torch.empty_like(x)
    if T == 0:
        return out
    inter = torch.empty(T * k, I, dtype=x.dtype, device=x.device)
    meta = dict(H=H, I=I, TOPK=k, BN=block_n, num_warps=num_warps)
    _gate_up_kernel[(T * k, triton.cdiv(I, block_n))](
        x, w13, topk_ids, inter, E, x.stride(0), w13.stride(0), w13.stride(1),
        BK=min(block_k, triton.next_power_of_2(H)), **meta)
    _down_kernel[(T, triton.cdiv(H, block_n))](
        inter, w2, topk_ids, topk_weights, out, E, w2.stride(0), w2.stride(1),
        topk_weights.stride(0), out.stride(0), BK=min(block_k, triton.next_power_of_2(I)),
        **meta)
    return out
