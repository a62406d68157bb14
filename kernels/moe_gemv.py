"""Triton: the expert mixture of a decode batch as per-assignment GEMVs, with no alignment.

The grouped GEMMs of `kernels/moe.py` need the assignments sorted and padded by expert
(`moe_align`) and give each 16-row block one expert: at one token and TP 4 (I = 128) that is
22 GEMM-1 programs, each streaming 512 KB of weights, on a 132-SM GPU. Here every program
takes one assignment a = t·k + j (expert ids[a], token t) and a slice of outputs:

- gate/up: BN1 rows of the expert's gate and up weights against x[t] (products summed in
  float32), SwiGLU in registers -> inter[a] (x.dtype, where the reference rounds);
- down: BN2 rows of w2[ids[a]] against inter[a], scaled by the routing weight -> y[a].

Grids are (assignments, output slices).
No tensor cores (one row has nothing to share a tile with), no sort; an assignment whose id is
outside [0, E) writes nothing, and its row stays unset (its consumers skip it by id, as
`ExpertRows` says). Two tokens with the same expert each read its weights (L2 may serve the
second): the path is for decode batches (`takes`), where experts rarely repeat.

Programmatic dependent launch (`launch.pdl`, sm_90+): each launch may start while the one before it
drains. GEMM 1 waits (`gdc_wait`) before it reads the routing (its programs of the fused shared
expert's slot load that expert's weights first), then lets the down kernel launch; the down kernel
loads its expert's first weight slice before its own wait, so on a decode step its weights stream
while GEMM 1 finishes, and the launch gaps overlap work; then it lets the launch after it start
(the next layer's router kernel, which loads its own weights before it waits for this grid; any
launch without PDL still waits for completion). Every program reaches its wait before it may
return, so neither launch completes before the one it depends on (the stream order the launches
after them rely on).

Reference: `fused_moe_ref` (kernels/moe_ref.py); y is the `ExpertRows` layout of `fused_moe`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from qnext.kernels.launch import pdl_meta

# NOTE: tiles sized for bytes in flight, not for a pipeline (these loops may not be software
# pipelined): every program holds one 32 KB (gate/up: 4 rows each of gate and up x 2048, all
# of H = 2048 in one load) or 16 KB (down: 64 x 128) tile load at a time: 352 programs each at
# one token, TP 4 (`bench_moe_layers.py --sweep`, one H200, 2026-11-28, docs/perf/moe.md:
# 17.0 vs 19.4 µs a layer at T = 2 TP 4, 13.1 vs 13.6 at T = 1; no other variant better by
# > 0.9 µs). GEMM 1's shared-expert loads (`gate_up_first` twice, the second keeping the
# first's values where it loads nothing) are also what keeps all of a program's 16 weight
# loads in flight: with one masked load a step, ptxas interleaved them with the products
# (7-9 issued before the first FMA, the rest one by one, 80 registers; now all 16, 96
# registers, with or without the hint): 11.7 against 12.9 µs a layer at TP 4 T = 1,
# docs/perf/moe.md "GEMM 1's loads in flight" (2026-11-29). scripts/compile_sm90.py prints
# the registers.
BN1, BK1 = 4, 2048  # gate/up: output rows (of gate and of up) x reduction slice a program
BN2, BK2 = 64, 128  # down
MAX_ASSIGNMENTS = 128  # decode batches (11 tokens of top-10 + the shared expert)


@triton.jit
def slice_rows(nb, s_wn, N, BN: tl.constexpr, BK: tl.constexpr):
    """Output slice nb's BN rows (and which are < N), the BK reduction lanes, and their
    offsets in one expert's matrix: (offs_n, n_ok, offs_k, rows)."""
    offs_n = nb * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    return offs_n, offs_n < N, offs_k, offs_n[:, None].to(tl.int64) * s_wn + offs_k[None, :]


@triton.jit
def tile(ids_ptr, w_ptr, a, nb, s_we, s_wn, N, BN: tl.constexpr, BK: tl.constexpr):
    """Assignment a's expert e, `slice_rows` (offs_n, n_ok, offs_k) and pointers to
    w[e, rows, :BK]. ids are read past L1 (".cg"): under PDL the down kernel reads them
    before its wait (see `_gemv_down_kernel`)."""
    e = tl.load(ids_ptr + a, cache_modifier=".cg")
    offs_n, n_ok, offs_k, rows = slice_rows(nb, s_wn, N, BN, BK)
    return e, offs_n, n_ok, offs_k, w_ptr + e * s_we + rows


@triton.jit
def gate_up_first(g_ptrs, n_ok, offs_k, take, g, u, s_wn, H: tl.constexpr, I: tl.constexpr):
    """The first column step's gate and up weights at g_ptrs (up: I rows below) where `take`
    holds; elsewhere g and u stay (no load is issued for them)."""
    ok = take & n_ok[:, None] & (offs_k < H)[None, :]
    return (tl.load(g_ptrs, mask=ok, other=g),
            tl.load(g_ptrs + I * s_wn, mask=ok, other=u))


@triton.jit
def gate_up_rows(x_ptr, inter_ptr, a, g, u, offs_n, n_ok, offs_k, g_ptrs, s_xt, s_wn,
                 H: tl.constexpr, I: tl.constexpr, TOPK: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr):
    """inter[a, offs_n] = SwiGLU of the gate rows at g_ptrs (and the up rows I below) against
    x[a // TOPK]; g, u: their first column step, loaded already (`gate_up_first`)."""
    x_ptrs = x_ptr + (a // TOPK) * s_xt + offs_k
    x = tl.load(x_ptrs, mask=offs_k < H, other=0.0).to(tl.float32)[None, :]
    gate = g.to(tl.float32) * x
    up = u.to(tl.float32) * x
    u_ptrs = g_ptrs + I * s_wn
    for k0 in range(BK, H, BK):
        x_ptrs += BK
        g_ptrs += BK
        u_ptrs += BK
        k_ok = offs_k < H - k0
        x = tl.load(x_ptrs, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        ok = n_ok[:, None] & k_ok[None, :]
        gate += tl.load(g_ptrs, mask=ok, other=0.0).to(tl.float32) * x
        up += tl.load(u_ptrs, mask=ok, other=0.0).to(tl.float32) * x
    g = tl.sum(gate, axis=1)
    act = g * tl.sigmoid(g) * tl.sum(up, axis=1)
    tl.store(inter_ptr + a * I + offs_n, act.to(inter_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def down_first(w_ptrs, live, n_ok, offs_k, I: tl.constexpr):
    """The down rows' first weight slice (loaded before the wait for the intermediate)."""
    return tl.load(w_ptrs, mask=live & n_ok[:, None] & (offs_k < I)[None, :], other=0.0)


@triton.jit
def down_rows(inter_ptr, tw_ptr, y_ptr, a, w, w_ptrs, offs_n, n_ok, offs_k, s_tw,
              H: tl.constexpr, I: tl.constexpr, TOPK: tl.constexpr, BN: tl.constexpr,
              BK: tl.constexpr):
    """y[a, offs_n] = the down rows (first slice w, at w_ptrs) against inter[a], scaled by the
    routing weight; every step loads the next slice before it uses the current one."""
    v_ptrs = inter_ptr + a * I + offs_k
    acc = tl.zeros([BN], tl.float32)
    for k0 in range(0, I, BK):
        v = tl.load(v_ptrs, mask=offs_k < I - k0, other=0.0, cache_modifier=".cg")
        acc += tl.sum(w.to(tl.float32) * v.to(tl.float32)[None, :], axis=1)
        v_ptrs += BK
        w_ptrs += BK
        w = tl.load(w_ptrs, mask=n_ok[:, None] & (offs_k < I - k0 - BK)[None, :], other=0.0)
    tw = tl.load(tw_ptr + (a // TOPK) * s_tw + a % TOPK).to(tl.float32)
    tl.store(y_ptr + a * H + offs_n, (acc * tw).to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def shared_first(w_ptr, a, nb, s_we, s_wn, E, shared, H: tl.constexpr, I: tl.constexpr,
                 TOPK: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """GEMM 1 before the routing: `slice_rows` for slice nb, whether assignment a is a
    token's last slot and `shared` (the fused shared expert E - 1, known before the routing),
    and that expert's first gate and up weights if so (zeros elsewhere): (offs_n, n_ok,
    offs_k, rows, pre, g, u)."""
    offs_n, n_ok, offs_k, rows = slice_rows(nb, s_wn, I, BN, BK)
    pre = (a % TOPK == TOPK - 1) & (shared != 0)
    zero = tl.zeros([BN, BK], w_ptr.dtype.element_ty)
    g, u = gate_up_first(w_ptr + (E - 1) * s_we + rows, n_ok, offs_k, pre, zero, zero, s_wn,
                         H, I)
    return offs_n, n_ok, offs_k, rows, pre, g, u


@triton.jit
def routed_first(ids_ptr, w_ptr, a, rows, n_ok, offs_k, pre, g, u, s_we, s_wn, E,
                 H: tl.constexpr, I: tl.constexpr):
    """GEMM 1 after the routing: assignment a's expert e, its pointers, and its first gate
    and up weights (kept from `shared_first` where they are that expert's; none for ids
    outside [0, E)): (e, g_ptrs, g, u)."""
    e = tl.load(ids_ptr + a, cache_modifier=".cg")
    g_ptrs = w_ptr + e * s_we + rows
    take = ~(pre & (e == E - 1)) & (e >= 0) & (e < E)
    g, u = gate_up_first(g_ptrs, n_ok, offs_k, take, g, u, s_wn, H, I)
    return e, g_ptrs, g, u


@triton.jit(do_not_specialize=["shared"])
def _gemv_gate_up_kernel(x_ptr, w_ptr, ids_ptr, inter_ptr, s_xt, s_we, s_wn, E, shared,
                         H: tl.constexpr, I: tl.constexpr, TOPK: tl.constexpr,
                         BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr):
    a = tl.program_id(0).to(tl.int64)
    offs_n, n_ok, offs_k, rows, pre, g, u = shared_first(w_ptr, a, tl.program_id(1), s_we,
                                                         s_wn, E, shared, H, I, TOPK, BN, BK)
    if PDL:
        gdc_wait()  # the routing's ids and weights
        gdc_launch_dependents()  # only now: the down kernel reads ids before its own wait
    e, g_ptrs, g, u = routed_first(ids_ptr, w_ptr, a, rows, n_ok, offs_k, pre, g, u, s_we,
                                   s_wn, E, H, I)
    if (e < 0) | (e >= E):
        return
    gate_up_rows(x_ptr, inter_ptr, a, g, u, offs_n, n_ok, offs_k, g_ptrs, s_xt, s_wn, H, I,
                 TOPK, BN, BK)


@triton.jit
def _gemv_down_kernel(inter_ptr, w_ptr, ids_ptr, tw_ptr, y_ptr, s_we, s_wn, s_tw, E,
                      H: tl.constexpr, I: tl.constexpr, TOPK: tl.constexpr,
                      BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr):
    a = tl.program_id(0).to(tl.int64)
    e, offs_n, n_ok, offs_k, w_ptrs = tile(ids_ptr, w_ptr, a, tl.program_id(1), s_we, s_wn, H,
                                           BN, BK)
    live = (e >= 0) & (e < E)
    # the weights of the first slice come before the wait: under PDL they stream while GEMM 1
    # still runs
    w = down_first(w_ptrs, live, n_ok, offs_k, I)
    if PDL:
        gdc_launch_dependents()  # the next layer's router: loads its weights, waits for us
        gdc_wait()  # GEMM 1's intermediate; no program may finish before it (stream order)
    if live == 0:
        return
    down_rows(inter_ptr, tw_ptr, y_ptr, a, w, w_ptrs, offs_n, n_ok, offs_k, s_tw, H, I, TOPK,
              BN, BK)


def takes(num_assignments: int) -> bool:
    """Whether a batch of this many assignments takes the GEMV path (decode batches)."""
    return 0 < num_assignments <= MAX_ASSIGNMENTS


def expert_rows_gemv(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                     topk_weights: torch.Tensor, topk_ids: torch.Tensor, y: torch.Tensor,
                     tiles: tuple[int, int, int, int] = (BN1, BK1, BN2, BK2),
                     use_pdl: bool | None = None, shared: bool = False) -> None:
    """Fills y [T·k, H] with one weighted row per assignment (fused_moe's `ExpertRows`), for
    inputs `fused_moe` has checked. `tiles`: (BN1, BK1, BN2, BK2), powers of 2 (benchmarks).
    use_pdl: both launches with programmatic dependent launch (default: `launch.pdl`).
    shared: every token's last slot most likely holds the fused shared expert E - 1 (a hint:
    those GEMM-1 programs load its weights before they read the routing, and load again
    where the slot holds another id)."""
    (T, H), (E, I2, _), k = x.shape, w13.shape, topk_ids.shape[1]
    bn1, bk1, bn2, bk2 = tiles
    I, n = I2 // 2, T * k
    bk1 = min(bk1, triton.next_power_of_2(H))  # small test models: no all-masked lanes
    inter = torch.empty(n, I, dtype=x.dtype, device=x.device)
    topk_ids = topk_ids.contiguous()
    meta = dict(H=H, I=I, TOPK=k, num_warps=4, **pdl_meta(x.device, use_pdl))
    _gemv_gate_up_kernel[(n, triton.cdiv(I, bn1))](
        x, w13, topk_ids, inter, x.stride(0), w13.stride(0), w13.stride(1), E, int(shared),
        BN=bn1, BK=bk1, **meta)
    _gemv_down_kernel[(n, triton.cdiv(H, bn2))](
        inter, w2, topk_ids, topk_weights, y, w2.stride(0), w2.stride(1),
        topk_weights.stride(0), E, BN=bn2, BK=bk2, **meta)
