"""Triton kernels: the fused MoE expert mixture (SwiGLU experts) as two grouped GEMMs.

After `moe_align` (kernels/moe_align.py) every block of BLOCK_M sorted rows belongs to one
expert. GEMM 1 gathers the token rows of x, multiplies them by w13[e] (gate rows, then up rows)
and applies SwiGLU in registers -> the intermediate [rows, I]. GEMM 2 multiplies it by w2[e]ᵀ
and scales each row by its routing weight -> one row per assignment [T·k, H]. A last kernel
adds the k rows of each token in slot order (deterministic, no atomics), skipping dropped ids.
Accumulation in float32; the intermediate and the per-assignment rows are stored in x.dtype
(the reference rounds there too); float32 operands multiply in IEEE float32 (no TF32).

Decode batches (up to `moe_gemv.MAX_ASSIGNMENTS` assignments) take `kernels/moe_gemv.py`
instead: routing alone (with the router GEMV in the same launch, `kernels/moe_router.py`, when
`fused_moe_from_hidden` is given the router), then per-assignment GEMVs with no alignment
(`MoeConfig.gemv`). On 4 x H200 they beat the grouped GEMMs at every decode size and took
the TP4 batch-1 step from 3.14 to 2.75-2.80 ms (docs/perf/moe.md); QNEXT_MOE_GEMV=0 turns
both off (bench_moe.py times them).

Reference: `fused_moe_ref` (kernels/moe_ref.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from qnext.kernels import moe_gemv, moe_router
from qnext.kernels import moe_route_align as route_align
from qnext.kernels.expert_rows import ExpertRows
from qnext.kernels.launch import check_device
from qnext.kernels.moe_align import moe_align
from qnext.kernels.moe_route import moe_route


@dataclass(frozen=True)
class MoeConfig:
    """Tiles (powers of 2, >= 16) of the two grouped GEMMs: rows per expert block, then the
    output (n) and reduction (k) tiles of GEMM 1 (over I, H) and GEMM 2 (over H, I). `gemv`:
    per-assignment GEMVs instead (kernels/moe_gemv.py: no alignment, its own tiles)."""
    block_m: int = 16
    block_n1: int = 64
    block_k1: int = 128
    block_n2: int = 64
    block_k2: int = 128
    num_warps: int = 4
    num_stages: int = 4
    gemv: bool = False


DECODE_GEMV = os.environ.get("QNEXT_MOE_GEMV", "1") != "0"


def default_config(num_assignments: int, num_experts: int, elem_size: int) -> MoeConfig:
    """Decode (few rows per expert): 16-row blocks, 4 pipeline stages; float32 operands or
    weights (elem_size 4) halve GEMM 1's n tile to fit shared memory. Prefill: 64-row blocks,
    so that each expert's weights are read about once. Chosen by scripts/bench_moe.py --sweep.
    Decode batches: the GEMVs (`DECODE_GEMV`)."""
    if DECODE_GEMV and moe_gemv.takes(num_assignments):
        return MoeConfig(gemv=True)
    per_expert = num_assignments / max(1, min(num_assignments, num_experts))
    if per_expert <= 16:
        return MoeConfig(block_n1=64 if elem_size <= 2 else 32)
    return MoeConfig(block_m=64, block_n1=64, block_k1=64, block_n2=128, block_k2=64,
                     num_warps=8, num_stages=3)


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _block_rows(sorted_ptr, expert_ptr, pid_m, N, BM: tl.constexpr):
    """(rows, assignment of each row, row mask, expert) of row block pid_m; expert -1 if unused."""
    rows = pid_m * BM + tl.arange(0, BM)
    expert = tl.load(expert_ptr + pid_m)
    assign = tl.load(sorted_ptr + rows, mask=expert >= 0, other=N)
    return rows.to(tl.int64), assign, assign < N, expert.to(tl.int64)


@triton.jit(do_not_specialize=["N"])  # any assignment count: no recompile
def _gate_up_kernel(x_ptr, w_ptr, sorted_ptr, expert_ptr, inter_ptr, N, s_xt, s_we,
                    s_wn, H: tl.constexpr, I: tl.constexpr, TOPK: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, IEEE: tl.constexpr):
    n_tiles = tl.cdiv(I, BN)
    pid_m, pid_n = tl.program_id(0) // n_tiles, tl.program_id(0) % n_tiles
    rows, assign, row_ok, e = _block_rows(sorted_ptr, expert_ptr, pid_m, N, BM)
    if e < 0:
        return
    tok = (assign // TOPK).to(tl.int64)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    a_ptrs = x_ptr + tok[:, None] * s_xt + offs_k[None, :]
    g_ptrs = w_ptr + e * s_we + offs_n[None, :].to(tl.int64) * s_wn + offs_k[:, None]
    u_ptrs = g_ptrs + I * s_wn
    n_ok = offs_n < I
    gate = tl.zeros([BM, BN], tl.float32)
    up = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, H, BK):
        k_ok = offs_k < H - k0
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wg = tl.load(g_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        wu = tl.load(u_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        gate = _mma(a, wg.to(a.dtype), gate, IEEE)
        up = _mma(a, wu.to(a.dtype), up, IEEE)
        a_ptrs += BK
        g_ptrs += BK
        u_ptrs += BK
    act = gate * tl.sigmoid(gate) * up
    tl.store(inter_ptr + rows[:, None] * I + offs_n[None, :], act.to(inter_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit(do_not_specialize=["N"])  # any assignment count: no recompile
def _down_kernel(inter_ptr, w_ptr, sorted_ptr, expert_ptr, tw_ptr, y_ptr, N, s_we,
                 s_wn, s_tw, H: tl.constexpr, I: tl.constexpr, TOPK: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, IEEE: tl.constexpr):
    n_tiles = tl.cdiv(H, BN)
    pid_m, pid_n = tl.program_id(0) // n_tiles, tl.program_id(0) % n_tiles
    rows, assign, row_ok, e = _block_rows(sorted_ptr, expert_ptr, pid_m, N, BM)
    if e < 0:
        return
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    a_ptrs = inter_ptr + rows[:, None] * I + offs_k[None, :]
    w_ptrs = w_ptr + e * s_we + offs_n[None, :].to(tl.int64) * s_wn + offs_k[:, None]
    n_ok = offs_n < H
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, I, BK):
        k_ok = offs_k < I - k0
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _mma(a, w.to(a.dtype), acc, IEEE)
        a_ptrs += BK
        w_ptrs += BK
    slot = assign.to(tl.int64)
    tw = tl.load(tw_ptr + (slot // TOPK) * s_tw + slot % TOPK, mask=row_ok, other=0.0)
    acc = acc * tw.to(tl.float32)[:, None]
    tl.store(y_ptr + slot[:, None] * H + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def combined_row(y_ptr, ids_ptr, t, offs, mask, H, E, TOPK: tl.constexpr, BH: tl.constexpr):
    """float32 sum, in slot order, of token t's TOPK rows of y at columns offs, skipping slots
    whose id is outside [0, E) (the combine step; also fused into kernels/allreduce_norm.py)."""
    acc = tl.zeros([BH], tl.float32)
    for j in tl.static_range(TOPK):
        e = tl.load(ids_ptr + t * TOPK + j)
        ok = (e >= 0) & (e < E)
        acc += tl.load(y_ptr + (t * TOPK + j) * H + offs, mask=mask & ok,
                       other=0.0).to(tl.float32)
    return acc


@triton.jit
def _combine_kernel(y_ptr, ids_ptr, out_ptr, H, E, s_ot, TOPK: tl.constexpr, BH: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BH + tl.arange(0, BH)
    acc = combined_row(y_ptr, ids_ptr, t, offs, offs < H, H, E, TOPK, BH)
    tl.store(out_ptr + t * s_ot + offs, acc.to(out_ptr.dtype.element_ty), mask=offs < H)


def combine_rows(rows: torch.Tensor, ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """`ExpertRows.combine`: [T, H] from rows [T·k, H] and ids [T, k]."""
    (T, k), H = ids.shape, rows.shape[1]
    out = torch.empty(T, H, dtype=rows.dtype, device=rows.device)
    if T:
        bh = min(1024, triton.next_power_of_2(H))
        _combine_kernel[(T, triton.cdiv(H, bh))](rows, ids, out, H, num_experts, H, TOPK=k,
                                                 BH=bh)
    return out


def fused_moe_routed(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                     router_logits: torch.Tensor, top_k: int, renormalize: bool,
                     shared: bool = False, combine: bool = True):
    """Routing (`moe_route`'s contract, incl. a fused shared expert as the last expert of w13 /
    w2) and the expert mixture; decode batches take the GEMVs after routing, or (QNEXT_MOE_GEMV
    =0) route and align in one launch (`moe_route_align`). `combine`: as for `fused_moe`."""
    T, n = x.shape[0], x.shape[0] * (top_k + shared)
    cfg = default_config(n, w13.shape[0], _elem_size(x, w13, w2))
    if cfg.gemv or not route_align.takes(T, top_k, shared):
        routing = moe_route(router_logits, top_k, renormalize, shared)
        return fused_moe(x, w13, w2, *routing, cfg, combine=combine, shared=shared)
    weights, ids, aligned = route_align.moe_route_align(router_logits, top_k, renormalize,
                                                        shared, cfg.block_m)
    return fused_moe(x, w13, w2, weights, ids, cfg, aligned, combine, shared)


def fused_moe_from_hidden(x: torch.Tensor, router_weight: torch.Tensor, num_logits: int,
                          w13: torch.Tensor, w2: torch.Tensor, top_k: int, renormalize: bool,
                          shared: bool = False, combine: bool = True):
    """`fused_moe_routed` with the router included: logits = x @ router_weight[:num_logits]ᵀ
    (rows past num_logits are padding). Decode batches on the GEMV path route in one launch
    with the router GEMV (`moe_router.route_hidden`); the rest run the GEMM first."""
    T, n = x.shape[0], x.shape[0] * (top_k + shared)
    cfg = default_config(n, w13.shape[0], _elem_size(x, w13, w2))
    if cfg.gemv and moe_router.takes(T, num_logits - shared):
        routing = moe_router.route_hidden(x, router_weight, num_logits, top_k, renormalize,
                                          shared)
        return fused_moe(x, w13, w2, *routing, cfg, combine=combine, shared=shared)
    logits = F.linear(x, router_weight)[:, :num_logits]
    return fused_moe_routed(x, w13, w2, logits, top_k, renormalize, shared, combine)


def _elem_size(*tensors: torch.Tensor) -> int:
    return max(t.element_size() for t in tensors)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, config: MoeConfig | None = None,
              aligned: tuple | None = None, combine: bool = True, shared: bool = False):
    """Routed expert mixture, the contract of `fused_moe_ref`: x [T, H] (fp16/bf16/fp32,
    contiguous rows); w13 [E, 2I, H] (gate rows first) and w2 [E, H, I], contiguous in their
    last dim, cast to x.dtype in registers; topk_weights [T, k] float; topk_ids [T, k] int32/int64
    contiguous, ids outside [0, E) contribute nothing. Returns [T, H] in x.dtype. `aligned`:
    `moe_align(topk_ids, E, block_m of the config used)`, when the caller has it already.
    combine=False: the `ExpertRows` before the per-token sum (the last launch) instead.
    shared: every token's last slot holds the fused shared expert E - 1 (a hint for the
    decode GEMVs, `moe_gemv.expert_rows_gemv`)."""
    _check(x, w13, w2, topk_weights, topk_ids)
    (T, H), E, k = x.shape, w13.shape[0], topk_ids.shape[1]
    y = torch.empty(T * k, H, dtype=x.dtype, device=x.device)
    if T:
        _expert_rows(x, w13, w2, topk_weights, topk_ids, y, config, aligned, shared)
    rows = ExpertRows(y, topk_ids, E)
    return rows.combine() if combine else rows


def _expert_rows(x, w13, w2, topk_weights, topk_ids, y, config, aligned, shared) -> None:
    """The two grouped GEMMs: y [T·k, H], one weighted row per assignment."""
    (T, H), (E, I2, _), k = x.shape, w13.shape, topk_ids.shape[1]
    I, n = I2 // 2, T * k
    cfg = config or default_config(n, E, _elem_size(x, w13, w2))
    if cfg.gemv:
        moe_gemv.expert_rows_gemv(x, w13, w2, topk_weights, topk_ids, y, shared=shared)
        return
    sorted_ids, block_expert, _ = aligned or moe_align(topk_ids, E, cfg.block_m)
    inter = torch.empty(sorted_ids.shape[0], I, dtype=x.dtype, device=x.device)
    blocks, ieee = block_expert.shape[0], x.dtype == torch.float32
    meta = dict(H=H, I=I, TOPK=k, BM=cfg.block_m, IEEE=ieee, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages)
    _gate_up_kernel[(blocks * triton.cdiv(I, cfg.block_n1),)](
        x, w13, sorted_ids, block_expert, inter, n, x.stride(0), w13.stride(0),
        w13.stride(1), BN=cfg.block_n1, BK=cfg.block_k1, **meta)
    _down_kernel[(blocks * triton.cdiv(H, cfg.block_n2),)](
        inter, w2, sorted_ids, block_expert, topk_weights, y, n, w2.stride(0),
        w2.stride(1), topk_weights.stride(0), BN=cfg.block_n2, BK=cfg.block_k2,
        **meta)


def _check(x, w13, w2, topk_weights, topk_ids) -> None:
    if x.dim() != 2 or x.stride(1) != 1 or x.dtype not in (torch.float16, torch.bfloat16,
                                                           torch.float32):
        raise ValueError(f"x must be a fp16/bf16/fp32 [T, H] tensor with contiguous rows, got "
                         f"{tuple(x.shape)} {x.dtype}")
    T, H = x.shape
    if w13.dim() != 3 or w13.shape[1] % 2 or w13.shape[2] != H or w13.stride(2) != 1:
        raise ValueError(f"w13 {tuple(w13.shape)} must be [E, 2I, H={H}], contiguous in H")
    E, I = w13.shape[0], w13.shape[1] // 2
    if w2.shape != (E, H, I) or w2.stride(2) != 1:
        raise ValueError(f"w2 {tuple(w2.shape)} must be [E={E}, H={H}, I={I}], contiguous in I")
    if not (w13.dtype.is_floating_point and w2.dtype.is_floating_point):
        raise ValueError("w13 and w2 must be floating point")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != T or topk_weights.shape != topk_ids.shape \
            or topk_weights.stride(1) != 1 or not topk_weights.dtype.is_floating_point:
        raise ValueError(f"topk_weights {tuple(topk_weights.shape)} (float, contiguous slots) "
                         f"and topk_ids {tuple(topk_ids.shape)} must both be [T={T}, k]")
    check_device("fused_moe", x, w13, w2, topk_weights, topk_ids)
