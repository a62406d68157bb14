"""Benchmark (not a test): the decode MoE as the model runs it — N layers back to back in one
CUDA graph — with and without programmatic dependent launch (PDL, kernels/launch.py).

Each layer is Qwen3-Next-80B-A3B's at one rank of TP4 (I = 128) or TP1 (I = 512): H = 2048,
512 routed experts + the shared one fused as expert 512 (top-10 + 1), its own weights, router
and input rows, so no layer finds another's weights in L2. A layer is three launches: the
router kernel (router GEMV + routing, `moe_router.route_hidden`) and the two per-assignment
GEMVs (`moe_gemv.expert_rows_gemv`), all three with or without PDL (with it the router loads
its weights before it waits for the layer before, and lets the first GEMV launch as it starts);
the model folds the per-token combine into the next all-reduce + norm, so it is not timed here.
With `--norm` each layer starts as the model's does at TP1: the residual add + norm
(`kernels/norm.add_rms_norm`) writes the router's input; that launch (no PDL) lets the router
launch as it starts (`launch.trigger_meta`), so the router's weights stream during the norm.

- **Floor** (per layer) = (router rows + distinct experts touched × 3·I) · H · 2 B over the
  bandwidth of a 1 GiB device-to-device copy measured in the same run.
- **1 layer**: one layer's graph, L2 flushed before each replay (`bench_common.graph_us`), so
  the replay's own start and the event pair count in full, as in bench_moe.py's tables.
- **N layers / N**: the graph of N layers, same timing, divided by N: what a decode step pays a
  layer (the graph's start spread over N).

Before timing, every variant's outputs (eager and graph-replayed) must equal the no-PDL
launches' bit for bit.

    python scripts/bench_moe_layers.py [--layers N] [--norm] [--profile | --sweep]

--profile: instead, the kernels of the N-layer graph at TP4, one token, with and without PDL,
from torch.profiler over 20 replays (device time a kernel, and the graph's span).
--sweep: instead, N layers / N with PDL for each of `TILES` (the GEMVs' (BN1, BK1, BN2, BK2),
the router's (rows, columns) and warps; the data behind moe_gemv's and moe_router's defaults), at
TP4 T = 1, 2, 3, 4, 11 and TP1 T = 1, 2, 8, the better of two passes (in and against the
list's order); a "*" marks outputs not bit-equal to the first variant's.
"""

from __future__ import annotations

import statistics
import sys

import torch

from qnext.kernels import moe_gemv, moe_router
from qnext.kernels.moe_gemv import expert_rows_gemv
from qnext.kernels.moe_router import route_hidden
from qnext.kernels.norm import add_rms_norm
from bench_common import copy_gbps, graph_us

H, E, TOPK, ROUTER_ROWS = 2048, 512, 10, 528
VARIANTS = {"no PDL": False, "PDL": True}  # the three launches
# (GEMV tiles (BN1, BK1, BN2, BK2), router tiles (rows, columns a step), router warps); the
# first: the kernels' defaults (warps None: the routing's choice, 4 at 512 experts)
DEFAULTS = ((moe_gemv.BN1, moe_gemv.BK1, moe_gemv.BN2, moe_gemv.BK2),
            (moe_router.BN, moe_router.BK), None)
NORM = "--norm" in sys.argv
TILES = [DEFAULTS, ((2, 2048, 64, 128), (4, 1024), 4), ((8, 2048, 64, 128), (4, 1024), 4),
         ((4, 2048, 128, 128), (4, 1024), 4), ((4, 2048, 32, 128), (4, 1024), 4),
         ((4, 2048, 64, 128), (2, 1024), 4)]


def _layers(n: int, I: int, T: int, seed: int) -> list[tuple]:
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape, scale):
        return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.bfloat16) * scale

    norm = (rand(H, scale=0.1), rand(T, H, scale=1.0)) if NORM else None
    return [(rand(T, H, scale=1.0), rand(ROUTER_ROWS, H, scale=H**-0.5),
             rand(E + 1, 2 * I, H, scale=H**-0.5), rand(E + 1, H, I, scale=I**-0.5), norm)
            for _ in range(n)]


def _step(layers: list[tuple], use_pdl: bool, tiles: tuple = DEFAULTS) -> list[torch.Tensor]:
    out = []
    for x, router, w13, w2, norm in layers:
        if norm is not None:  # (--norm) the residual add + norm writes the router's input
            x, _ = add_rms_norm(x, norm[0], 1e-6, norm[1])
        tw, ids = route_hidden(x, router, E + 1, TOPK, True, True, num_warps=tiles[2],
                               tiles=tiles[1], use_pdl=use_pdl)
        y = torch.empty(ids.numel(), H, dtype=x.dtype, device="cuda")
        expert_rows_gemv(x, w13, w2, tw, ids, y, tiles=tiles[0], use_pdl=use_pdl, shared=True)
        out.append(y)
    return out


def _replayed(fn) -> list[torch.Tensor]:
    """fn's outputs from a replay of its CUDA graph (not from the capture)."""
    fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    for y in out:
        y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    return out


def _check(layers: list[tuple]) -> None:
    want = _step(layers, False)
    for name, flag in VARIANTS.items():
        for got in (_step(layers, flag), _replayed(lambda f=flag: _step(layers, f))):
            if not all(torch.equal(g, w) for g, w in zip(got, want)):
                raise SystemExit(f"{name}: outputs differ from the launches without PDL")


def _floor_us(layers: list[tuple], I: int, bw: float) -> float:
    experts = [route_hidden(x, r, E + 1, TOPK, True, True)[1].unique().numel()
               for x, r, *_ in layers]
    rows = E + 1 + 3 * I * sum(experts) / len(experts)
    return rows * H * 2 / bw * 1e6


def profile(n: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    layers = _layers(n, 128, 1, seed=1)
    for name, flag in VARIANTS.items():
        fn = lambda f=flag: _step(layers, f)  # noqa: E731
        fn()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                graph.replay()
            torch.cuda.synchronize()
        print(f"\n### TP4, T = 1, {n} layers, {name}: 20 replays\n")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8,
                                        max_name_column_width=40))
        _spans(prof, n)


def _spans(prof, n: int) -> None:
    """Per-layer span of the graph (first kernel start to last kernel end of each replay,
    over n) from the profiler's kernel events."""
    events = sorted((e for e in prof.events() if e.device_type.name == "CUDA"),
                    key=lambda e: e.time_range.start)
    per = len(events) // 20
    spans = [events[i * per + per - 1].time_range.end - events[i * per].time_range.start
             for i in range(20)]
    busy = sum(e.time_range.end - e.time_range.start for e in events) / 20
    print(f"per layer: span {statistics.median(spans) / n:.2f} µs, kernels busy "
          f"{busy / n:.2f} µs ({per} kernels a replay)")


def sweep(n: int, bw: float) -> None:
    print("| TP | T | floor µs | " + " | ".join(f"{t} µs" for t in TILES) + " |")
    print("|---|---|---|" + "---|" * len(TILES))
    for tp, I, sizes in ((4, 128, (1, 2, 3, 4, 11)), (1, 512, (1, 2, 8))):
        for T in sizes:
            layers = _layers(n, I, T, seed=T)
            want = _step(layers, True)
            same = [all(torch.equal(g, w) for g, w in zip(_step(layers, True, t), want))
                    for t in TILES]
            us = {t: graph_us(lambda t=t: _step(layers, True, t)) / n for t in TILES}
            for t in reversed(TILES):  # a second pass in the other order: no order effect
                us[t] = min(us[t], graph_us(lambda t=t: _step(layers, True, t)) / n)
            cells = [f"{us[t]:.1f}" + ("" if ok else "*") for t, ok in zip(TILES, same)]
            print(f"| {tp} | {T} | {_floor_us(layers, I, bw):.1f} | " + " | ".join(cells)
                  + " |", flush=True)
            torch.cuda.empty_cache()


def main() -> None:
    n = int(sys.argv[sys.argv.index("--layers") + 1]) if "--layers" in sys.argv else 8
    if "--profile" in sys.argv:
        return profile(n)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {n} layers a graph"
          + (", each after a residual add + norm" if NORM else ""))
    bw = 1e9 * copy_gbps()
    print(f"HBM bandwidth (1 GiB device-to-device copy): {bw / 1e12:.2f} TB/s\n")
    if "--sweep" in sys.argv:
        return sweep(n, bw)
    names = list(VARIANTS)
    print("| TP | T | floor µs | " + " | ".join(f"1 layer, {v} µs" for v in names) + " | "
          + " | ".join(f"{n} layers / {n}, {v} µs" for v in names) + " | best / floor |")
    print("|---|---|---|" + "---|" * (2 * len(names) + 1))
    for tp, I in ((4, 128), (1, 512)):
        for T in (1, 2, 3, 4, 8, 11):
            print(f"| {tp} | {T} | {_row(n, I, T, bw)} |", flush=True)
            torch.cuda.empty_cache()


def _row(n: int, I: int, T: int, bw: float) -> str:
    """The table cells after TP and T: floor, 1-layer and n-layer times, best / floor."""
    layers = _layers(n, I, T, seed=T)
    _check(layers)
    floor = _floor_us(layers, I, bw)
    one = [graph_us(lambda f=f: _step(layers[:1], f)) for f in VARIANTS.values()]
    many = [graph_us(lambda f=f: _step(layers, f)) / n for f in VARIANTS.values()]
    return f"{floor:.1f} | " + " | ".join(f"{t:.1f}" for t in one + many) + \
        f" | {min(many) / floor:.2f}"


if __name__ == "__main__":
    main()
