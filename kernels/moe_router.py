"""Triton: the MoE router GEMV and the routing of a decode batch in one launch.

`route_hidden(x, weight, ...)` = `moe_route(F.linear(x, weight)[:, :num_logits], ...)`. One
program per (token t, BN router rows): x[t] against those rows of the router's weight (products
summed in float32, rounded to x.dtype as the GEMM's output would be), stored as float32 bits to
token t's row of polled logits (`launch.polled_rows`, -1 = unset between launches). One more
program per token, the last of its grid row, reads that row volatile until every logit is in
and routes the token (kernels/moe_route_warp.py: `poll_row`; `route_columns`: top-k with each
warp holding all the logits, softmax, renormalisation, the fused shared expert's gate), then
sets the row back to unset. No arrival atomics, and a top-k without barriers: the token is
routed 0.5-0.8 µs sooner than by the last of its programs to count itself in on an atomic
(docs/perf/moe.md, 2026-11-29). Waiting cannot deadlock: the GEMV programs wait for nothing
of this launch, the routing programs have the grid's highest block ids (dispatched last in
practice; even first, T of them leave the GPU room for the rest), and the interpreter, which
runs programs in order, runs them after their token's GEMV programs.

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
programs a token stream the 2 MB (528 padded rows of 4, H = 2048) and one more routes it.

Reference: `moe_route_ref(F.linear(x, weight)[:, :num_logits], ...)`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from qnext.kernels.launch import MAX_COUNTERS, check_device, pdl_meta, polled_rows
from qnext.kernels.moe_route import route_buffers, route_meta
from qnext.kernels.moe_route_warp import LANES, log_columns, poll_row, route_columns

MAX_EXPERTS = 32 * LANES  # the routing keeps a token's logits in 32 registers a lane at most
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
    time, rounded to x.dtype as the GEMM's output would be, stored to logits[t] as float32
    bits (int32, for `moe_route_warp.poll_row`). Every step loads the weights two steps ahead."""
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
    logit = tl.where(logit == logit, logit, float("nan"))  # one NaN: never `UNSET`'s bits
    tl.store(logits_ptr + t * s_lt + rows, logit.to(tl.int32, bitcast=True), mask=rows < R)


@triton.jit
def _router_kernel(x_ptr, wr_ptr, logits_ptr, w_ptr, ids_ptr, s_xt, s_wr, s_lt, R, E,
                   H: tl.constexpr, RN: tl.constexpr, RK: tl.constexpr, K: tl.constexpr,
                   LOG_NC: tl.constexpr, BLOCK_K: tl.constexpr, RENORM: tl.constexpr,
                   SHARED: tl.constexpr, BF16: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # the experts' GEMM 1 may launch now (it waits for this grid before it reads)
        gdc_launch_dependents()
    t = tl.program_id(0).to(tl.int64)
    rb = tl.program_id(1)
    if rb == tl.num_programs(1) - 1:  # token t's routing program, the last of its row
        if PDL:
            gdc_wait()  # the launch before this one set the row back
        xs, gate = poll_row(logits_ptr, t, s_lt, E, 1 << LOG_NC, SHARED)
        route_columns(xs, gate, w_ptr, ids_ptr, t, E, LOG_NC, K, BLOCK_K, RENORM, SHARED, BF16)
    else:
        w, w_next, w_ptrs, row_ok, rows, cols = router_weights(wr_ptr, rb, s_wr, R, H, RN, RK)
        if PDL:
            gdc_wait()  # x
        router_rows(x_ptr, logits_ptr, t, w, w_next, w_ptrs, row_ok, rows, cols, s_xt, s_lt,
                    R, H, RN, RK)


def takes(num_tokens: int, num_experts: int) -> bool:
    """Whether `route_hidden` handles a batch this big (decode batches) of this many routed
    experts (at most MAX_EXPERTS)."""
    return 0 < num_tokens <= MAX_COUNTERS and 0 < num_experts <= MAX_EXPERTS


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
            or not 0 < num_logits <= weight.shape[0] or not 0 < top_k <= num_logits - shared:
        raise ValueError(f"x {tuple(x.shape)} {x.dtype} and router weight "
                         f"{tuple(weight.shape)} {weight.dtype} must be [T, H] and [R, H] "
                         f"with contiguous rows, one dtype, R >= num_logits = {num_logits} "
                         f"and top_k = {top_k} in [1, {num_logits - shared}]")
    E = num_logits - shared
    if not takes(T, E):
        raise ValueError(f"{T} tokens of {E} experts: at most {MAX_COUNTERS} tokens of "
                         f"{MAX_EXPERTS} experts (use moe_route)")
    check_device("route_hidden", x, weight)
    logits = polled_rows(x.device, T, num_logits)  # float32 bits, `UNSET` between launches
    weights, ids = route_buffers(T, top_k, shared, x.device)
    keys = route_meta(top_k, E, shared, x.dtype)  # logits rounded to x's dtype
    meta = dict(K=top_k, LOG_NC=log_columns(E), BLOCK_K=keys["BLOCK_K"],
                SHARED=shared, BF16=keys["BF16"], num_warps=num_warps or keys["num_warps"],
                **pdl_meta(x.device, use_pdl))
    rn, rk = tiles
    _router_kernel[(T, triton.cdiv(num_logits, rn) + 1)](
        x, weight, logits, weights, ids, x.stride(0), weight.stride(0), logits.stride(0),
        num_logits, E, H=H, RN=rn,
        RK=min(rk, triton.next_power_of_2(H)), RENORM=renormalize, **meta)
    return weights, ids
