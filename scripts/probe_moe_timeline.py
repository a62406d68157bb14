"""Profiling aid (not a test, not a benchmark table): the timeline of a decode MoE layer as the
model runs it (TP4 shapes, 8 layers in a CUDA graph, PDL), from `%globaltimer` stamps.

The three launches of a layer (kernels/moe_router.py, kernels/moe_gemv.py) are run from
copies that stamp each program's start, its waits and its end around the real kernels' helpers
(`router_weights`, `router_rows`, `poll_row`, `route_columns`, `shared_first`, `routed_first`,
`gate_up_rows`, `tile`, `down_first`, `down_rows`). Before timing, the copies' outputs must
equal the real launches' bit for bit. Prints, per T, the median over 30 L2-flushed replays and
the middle 6 layers of µs from the layer's first router program start (under PDL, during the
layer before's down launch): when the router's programs pass `gdc_wait`, when its GEMV is done,
when the routing program has seen every logit, the routing; when GEMM 1's programs start, pass
`gdc_wait`, end; the same for down; and when the next layer's router starts. The timer ticks
in steps of ≈ 0.26 µs on an H200.

    python scripts/probe_moe_timeline.py [T ...]      (default: 1 2)
    python scripts/probe_moe_timeline.py --reads

--reads: instead, the bound any kernel design meets — graph-timed plain reads (one 16 KB tile
a program, summed; 8 launches a graph over 8 buffers, L2 flushed, / 8) of the router's 2.1 MB
and of the experts' bytes at one and two tokens: the router's choice must be read before the
experts' weights can be, so one layer costs at least the two reads in turn.
"""

from __future__ import annotations

import statistics
import sys

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from qnext.kernels import moe_gemv
from qnext.kernels.moe_gemv import (down_first, down_rows, gate_up_rows, routed_first,
                                     shared_first, tile)
from qnext.kernels.launch import polled_rows
from qnext.kernels.moe_route import route_buffers, route_meta
from qnext.kernels.moe_route_warp import log_columns, poll_row, route_columns
from qnext.kernels.moe_router import BK, BN, route_hidden, router_rows, router_weights
from bench_common import graph_us
from bench_moe_layers import E, H, TOPK, _layers

I, K = 128, TOPK + 1  # TP4; top-10 + the shared expert


@triton.jit
def _now(dep):
    """%globaltimer, read once `dep` (an int32 scalar) is computed."""
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer; // $1", "=l,r", [dep],
                                     dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _clock():
    return _now(tl.program_id(0))


@triton.jit
def _put(ptr, col: tl.constexpr, stamp):
    """Stamp `col` of this program's row (program_id(0), program_id(1)) of ptr [programs, 5],
    stored at once so that no stamp stays live in a register (the copies then take about the
    kernels' registers, so as many of their programs fit on an SM)."""
    row = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(ptr + row * 5 + col, stamp)


@triton.jit
def _router(x_ptr, wr_ptr, logits_ptr, w_ptr, ids_ptr, st_ptr, s_xt, s_wr, s_lt, R, E,
            H: tl.constexpr, RN: tl.constexpr, RK: tl.constexpr, K: tl.constexpr,
            LOG_NC: tl.constexpr, BLOCK_K: tl.constexpr, SHARED: tl.constexpr,
            BF16: tl.constexpr):
    gdc_launch_dependents()
    _put(st_ptr, 0, _clock())
    t = tl.program_id(0).to(tl.int64)
    rb = tl.program_id(1)
    if rb == tl.num_programs(1) - 1:
        gdc_wait()
        _put(st_ptr, 4, _clock())
        xs, gate = poll_row(logits_ptr, t, s_lt, E, 1 << LOG_NC, SHARED)
        _put(st_ptr, 2, _clock())
        route_columns(xs, gate, w_ptr, ids_ptr, t, E, LOG_NC, K, BLOCK_K, True, SHARED, BF16)
        _put(st_ptr, 3, _clock())
    else:
        w, w_next, w_ptrs, row_ok, rows, cols = router_weights(wr_ptr, rb, s_wr, R, H, RN, RK)
        gdc_wait()
        _put(st_ptr, 4, _clock())
        router_rows(x_ptr, logits_ptr, t, w, w_next, w_ptrs, row_ok, rows, cols, s_xt, s_lt,
                    R, H, RN, RK)
        _put(st_ptr, 1, _clock())


@triton.jit(do_not_specialize=["shared"])
def _gate_up(x_ptr, w_ptr, ids_ptr, inter_ptr, st_ptr, s_xt, s_we, s_wn, E, shared,
             H: tl.constexpr, I: tl.constexpr, TOPK: tl.constexpr, BN: tl.constexpr):
    _put(st_ptr, 0, _clock())
    a = tl.program_id(0).to(tl.int64)
    offs_n, n_ok, offs_k, rows, pre, g, u = shared_first(w_ptr, a, tl.program_id(1), s_we,
                                                         s_wn, E, shared, H, I, TOPK, BN, H)
    gdc_wait()
    _put(st_ptr, 1, _clock())
    gdc_launch_dependents()
    e, g_ptrs, g, u = routed_first(ids_ptr, w_ptr, a, rows, n_ok, offs_k, pre, g, u, s_we,
                                   s_wn, E, H, I)
    gate_up_rows(x_ptr, inter_ptr, a, g, u, offs_n, n_ok, offs_k, g_ptrs, s_xt, s_wn, H, I,
                 TOPK, BN, H)
    _put(st_ptr, 3, _clock())


@triton.jit
def _down(inter_ptr, w_ptr, ids_ptr, tw_ptr, y_ptr, st_ptr, s_we, s_wn, s_tw, E,
          H: tl.constexpr, I: tl.constexpr, TOPK: tl.constexpr, BN: tl.constexpr):
    _put(st_ptr, 0, _clock())
    a = tl.program_id(0).to(tl.int64)
    e, offs_n, n_ok, offs_k, w_ptrs = tile(ids_ptr, w_ptr, a, tl.program_id(1), s_we, s_wn, H,
                                           BN, I)
    w = down_first(w_ptrs, e < E, n_ok, offs_k, I)
    gdc_launch_dependents()
    _put(st_ptr, 1, _now((tl.sum(w.to(tl.float32)) == 12345.0).to(tl.int32)))  # weights in
    gdc_wait()
    _put(st_ptr, 2, _clock())
    down_rows(inter_ptr, tw_ptr, y_ptr, a, w, w_ptrs, offs_n, n_ok, offs_k, s_tw, H, I, TOPK,
              BN, I)
    _put(st_ptr, 3, _clock())


def _stamped_step(layers: list[tuple], stamps: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    out = []
    for (x, wr, w13, w2, _), (s_r, s_g, s_d) in zip(layers, stamps):
        T = x.shape[0]
        logits = polled_rows(x.device, T, E + 1)
        tw, ids = route_buffers(T, TOPK, True, x.device)
        meta = route_meta(TOPK, E, True, x.dtype)
        _router[(T, triton.cdiv(E + 1, BN) + 1)](
            x, wr, logits, tw, ids, s_r, x.stride(0), wr.stride(0), logits.stride(0), E + 1, E,
            H=H, RN=BN, RK=BK, K=TOPK, LOG_NC=log_columns(E),
            BLOCK_K=meta["BLOCK_K"], SHARED=True, BF16=meta["BF16"],
            num_warps=meta["num_warps"], launch_pdl=True)
        n = ids.numel()
        inter = torch.empty(n, I, dtype=x.dtype, device="cuda")
        y = torch.empty(n, H, dtype=x.dtype, device="cuda")
        pdl = dict(num_warps=4, launch_pdl=True)
        _gate_up[(n, I // moe_gemv.BN1)](x, w13, ids, inter, s_g, x.stride(0), w13.stride(0),
                                          w13.stride(1), E + 1, 1, H=H, I=I, TOPK=K,
                                          BN=moe_gemv.BN1, **pdl)
        _down[(n, H // moe_gemv.BN2)](inter, w2, ids, tw, y, s_d, w2.stride(0), w2.stride(1),
                                       tw.stride(0), E + 1, H=H, I=I, TOPK=K, BN=moe_gemv.BN2,
                                       **pdl)
        out.append(y)
    return out


def _real_step(layers: list[tuple]) -> list[torch.Tensor]:
    out = []
    for x, wr, w13, w2, _ in layers:
        tw, ids = route_hidden(x, wr, E + 1, TOPK, True, True)
        out.append(torch.empty(ids.numel(), H, dtype=x.dtype, device="cuda"))
        moe_gemv.expert_rows_gemv(x, w13, w2, tw, ids, out[-1], shared=True)
    return out


EVENTS = ["router: passes gdc_wait (median)", "router: GEMV done (median)",
          "router: GEMV done (last)", "router: every logit seen", "router: routed",
          "GEMM 1: first start", "GEMM 1: passes gdc_wait (median)",
          "GEMM 1: passes gdc_wait (last)", "GEMM 1: end (median)", "GEMM 1: end (last)",
          "down: first start", "down: weights in (median)", "down: weights in (last)",
          "down: passes gdc_wait (median)", "down: end (last)", "next layer's router starts"]


def _events(r: torch.Tensor, g: torch.Tensor, d: torch.Tensor, nxt: float) -> list[float]:
    """EVENTS from one layer's stamps (µs, the layer's first router start = 0)."""
    gemv = r[r[:, 1] > 0, 1]  # not the routing programs' rows
    return [r[:, 4].median(), gemv.median(), gemv.max(), r[:, 2].max(), r[:, 3].max(),
            g[:, 0].min(), g[:, 1].median(), g[:, 1].max(), g[:, 3].median(), g[:, 3].max(),
            d[:, 0].min(), d[:, 1].median(), d[:, 1].max(), d[:, 2].median(), d[:, 3].max(),
            nxt]


def timeline(T: int, n: int = 8, replays: int = 30) -> None:
    layers = _layers(n, I, T, seed=T)
    counts = (T * (triton.cdiv(E + 1, BN) + 1), T * K * I // moe_gemv.BN1,
              T * K * H // moe_gemv.BN2)
    stamps = [[torch.zeros(c, 5, dtype=torch.int64, device="cuda") for c in counts]
              for _ in range(n)]
    if not all(torch.equal(a, b) for a, b in zip(_stamped_step(layers, stamps),
                                                  _real_step(layers))):
        raise SystemExit("the stamped copies' outputs differ from the kernels'")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _stamped_step(layers, stamps)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    per: list[list[float]] = [[] for _ in EVENTS]
    for _ in range(replays):
        flush.zero_()
        graph.replay()
        torch.cuda.synchronize()
        s = [[t.cpu().double() for t in layer] for layer in stamps]
        for li in range(1, n - 1):
            base = s[li][0][:, 0].min()
            r, g, d = ((t - base) / 1e3 for t in s[li])
            nxt = (s[li + 1][0][:, 0].min() - base) / 1e3
            for acc, v in zip(per, _events(r, g, d, nxt)):
                acc.append(float(v))
    print(f"\n| TP4, T = {T}: event | µs from the router's start |\n|---|---|")
    for name, vals in zip(EVENTS, per):
        print(f"| {name} | {statistics.median(vals):.2f} |")


@triton.jit
def _read(src_ptr, out_ptr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    tl.store(out_ptr + pid, tl.sum(tl.load(src_ptr + pid * BLOCK + tl.arange(0, BLOCK))
                                   .to(tl.float32)))


def reads() -> None:
    print("\n| bytes read | what | µs (8 reads a graph / 8) | TB/s |\n|---|---|---|---|")
    block = 8192  # bf16: 16 KB a program
    for mb, what in ((2.1, "router rows (528 x 2048 bf16)"), (17.3, "T = 1: 11 experts"),
                     (34.6, "T = 2: 22 experts")):
        n = int(mb * 1e6) // (2 * block)
        srcs = [torch.randn(n * block, device="cuda", dtype=torch.bfloat16) for _ in range(8)]
        out = torch.empty(n, device="cuda", dtype=torch.float32)
        us = graph_us(lambda: [_read[(n,)](s, out, BLOCK=block) for s in srcs]) / 8
        print(f"| {2 * n * block / 1e6:.1f} MB | {what} | {us:.2f} | "
              f"{2 * n * block / us / 1e6:.2f} |")


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}, GEMV tiles {(moe_gemv.BN1, moe_gemv.BN2)}")
    if "--reads" in sys.argv:
        return reads()
    for T in [int(a) for a in sys.argv[1:]] or [1, 2]:
        timeline(T)


if __name__ == "__main__":
    main()
