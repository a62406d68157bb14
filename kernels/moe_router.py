"""Triton: the MoE router GEMV and the routing of a decode batch in one launch.

`route_hidden(x, weight, ...)` = `moe_route(F.linear(x, weight)[:, :num_logits], ...)`. One
program per (token t, BN router rows): x[t] against those rows of the router's weight (products
summed in float32, rounded to x.dtype as the GEMM's output would be), stored to a float32
logits scratch row; then the program counts itself in on token t's arrival counter
(`launch.arrival_counters`), and the last of the token's programs routes it (`route_token`:
softmax, top-k, renormalisation, the fused shared expert's gate) and sets the counter back.
Ordering: `last_to_arrive` (kernels/moe_route.py); the logits are read back past L1
(`route_token` loads with ".cg").

Under programmatic dependent launch (`launch.pdl`) the kernel launches with PDL itself: a
program loads its router rows (`router_weights`) before it waits (`gdc_wait`) for the launch
before, which wrote x (in the model the residual add + norm, which lets it in as it starts,
`launch.trigger_meta`; in bench_moe_layers' MoE-only chain the previous layer's down GEMV: the
2 MB stream while that launch runs); and every program first lets the next launch start (the
experts' GEMM 1, `moe_gemv`, which waits for this whole grid before it reads the routing): its
programs are resident when the routing ends (0.5 µs a layer at TP4, one token;
docs/perf/moe.md).

At decode the router's bf16 GEMM (cuBLAS: ≈ 3.3 µs a layer at batch 1 on 4 x H200 for 2 MB of
weights) and the routing kernel (≈ 4 µs) were two launches a layer, mostly latency; here 132
programs stream the 2 MB (528 padded rows of 4, H = 2048) and one routes.

Reference: `moe_route_ref(F.linear(x, weight)[:, :num_logits], ...)`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from qnext.kernels.launch import MAX_COUNTERS, arrival_counters, check_device, pdl_meta
from qnext.kernels.moe_route import last_to_arrive, route_meta, route_outputs, route_token

BN = 4  # router rows a program
BK = 1024  # hidden columns a step (bench_moe.py's router table, one H200, 2026-11-28: (4, 1024)
# 10.2 / 10.8 / 11.6 µs at 1 / 4 / 8 tokens, all of H in one step 11.2 / 11.1 / 12.2)


@triton.jit
def router_weights(wr_ptr, rb, s_wr, R, H: tl.constexpr, RN: tl.constexpr, RK: tl.constexpr):
    """Router rows rb·RN ... rb·RN + RN - 1: their first two column steps' weights (all of
    H = 2048 at RK = 1024) and where the steps are: (w, w_next, w_ptrs, row_ok, rows, cols).
    Nothing here depends on the launch before, so under PDL it loads before `gdc_wait`."""
    rows = rb * RN + tl.arange(0, RN)
    cols = tl.arange(0, RK)
    w_ptrs = wr_ptr + rows[:, None].to(tl.int64) * s_wr + cols[None, :]
    row_ok = rows[:, None] < R
    w = tl.load(w_ptrs, mask=row_ok & (cols < H)[None, :], other=0.0)
    w_next = tl.load(w_ptrs + RK, mask=row_ok & (cols < H - RK)[None, :], other=0.0)
    return w, w_next, w_ptrs, row_ok, rows, cols


@triton.jit
def router_rows(x_ptr, logits_ptr, t, w, w_next, w_ptrs, row_ok, rows, cols, s_xt, s_lt, R,
                H: tl.constexpr, RN: tl.constexpr, RK: tl.constexpr):
    """`router_weights`' rows against x[t]: products summed in float32 a column step at a
    time, rounded to x.dtype as the GEMM's output would be, stored to logits[t] as float32.
    Every step loads the weights two steps ahead."""
    acc = tl.zeros([RN, RK], tl.float32)
    for k0 in range(0, H, RK):
        x = tl.load(x_ptr + t * s_xt + k0 + cols, mask=cols < H - k0, other=0.0,
                    cache_modifier=".cg")
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        w = w_next
        w_ptrs += RK
        w_next = tl.load(w_ptrs + RK, mask=row_ok & (cols < H - k0 - 2 * RK)[None, :],
                         other=0.0)
    logit = tl.sum(acc, axis=1).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(logits_ptr + t * s_lt + rows, logit, mask=rows < R)


@triton.jit
def _router_kernel(x_ptr, wr_ptr, logits_ptr, w_ptr, ids_ptr, count_ptr, s_xt, s_wr, s_lt, R, E,
                   H: tl.constexpr, RN: tl.constexpr, RK: tl.constexpr, K: tl.constexpr,
                   BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, RENORM: tl.constexpr,
                   SHARED: tl.constexpr, BF16: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # the experts' GEMM 1 may launch now (it waits for this grid before it reads)
        gdc_launch_dependents()
    t = tl.program_id(0).to(tl.int64)
    w, w_next, w_ptrs, row_ok, rows, cols = router_weights(wr_ptr, tl.program_id(1), s_wr, R, H,
                                                           RN, RK)
    if PDL:
        gdc_wait()  # x, and the arrival counters' last reset
    router_rows(x_ptr, logits_ptr, t, w, w_next, w_ptrs, row_ok, rows, cols, s_xt, s_lt, R, H,
                RN, RK)
    if last_to_arrive(count_ptr + t, tl.num_programs(1)):
        route_token(logits_ptr, w_ptr, ids_ptr, t, s_lt, E, K, BLOCK_E, BLOCK_K, RENORM, SHARED,
                    BF16)


def takes(num_tokens: int) -> bool:
    """Whether `route_hidden` handles a batch this big (decode batches)."""
    return 0 < num_tokens <= MAX_COUNTERS


def route_hidden(x: torch.Tensor, weight: torch.Tensor, num_logits: int, top_k: int,
                 renormalize: bool, shared: bool = False,
                 num_warps: int | None = None, tiles: tuple[int, int] = (BN, BK),
                 use_pdl: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, H] (contiguous rows); weight [R >= num_logits, H] (contiguous rows, x's dtype):
    the router's logits are x @ weight[:num_logits]ᵀ (the rest is padding); returns
    `moe_route`'s (topk_weights float32 [T, k'], topk_ids int64 [T, k']). `num_warps`:
    overrides the routing's choice; `tiles`: router rows a program and hidden columns a step,
    powers of 2 (scripts/bench_moe.py times the variants); use_pdl: launch with programmatic
    dependent launch (default: `launch.pdl`)."""
    T, H = x.shape
    if x.dim() != 2 or x.stride(1) != 1 or weight.dim() != 2 or weight.shape[1] != H \
            or weight.stride(1) != 1 or weight.dtype != x.dtype \
            or not 0 < num_logits <= weight.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} {x.dtype} and router weight "
                         f"{tuple(weight.shape)} {weight.dtype} must be [T, H] and [R, H] "
                         f"with contiguous rows, one dtype, R >= num_logits = {num_logits}")
    if not takes(T):
        raise ValueError(f"{T} tokens: at most {MAX_COUNTERS} (use moe_route)")
    check_device("route_hidden", x, weight)
    logits = torch.empty(T, num_logits, dtype=torch.float32, device=x.device)  # scratch
    weights, ids = route_outputs(logits, top_k, shared, "route_hidden")
    meta = route_meta(top_k, num_logits - shared, shared, x.dtype)  # rounded to x's dtype
    meta["num_warps"] = num_warps or meta["num_warps"]
    rn, rk = tiles
    meta.update(pdl_meta(x.device, use_pdl))
    _router_kernel[(T, triton.cdiv(num_logits, rn))](
        x, weight, logits, weights, ids, arrival_counters(x.device, T), x.stride(0),
        weight.stride(0), logits.stride(0), num_logits, num_logits - shared, H=H, RN=rn,
        RK=min(rk, triton.next_power_of_2(H)), RENORM=renormalize, **meta)
    return weights, ids
