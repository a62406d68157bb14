"""Benchmark (not a test): the Triton fused MoE (`kernels/moe.py`, routing in
`kernels/moe_route.py`) vs the torch reference `fused_moe_ref` (the anchor), Qwen3-Next-80B-A3B
shapes (H = 2048, E = 512, top-10, bf16), one rank at TP1 (I = 512) and TP4 (I = 128), one GPU.
Prints markdown tables.

Floor: the weight bytes of the distinct experts the routing touches (3·H·I·2 B each) over the
HBM bandwidth measured in the same run by a 1 GiB device-to-device copy. qnext runs eagerly
(`triton.testing.do_bench`, median, Python launches included) and from a CUDA graph (median of
graph replays with L2 flushed before each — a captured decode step); the reference syncs with
the host (torch.unique) so it runs eagerly only. Also: the shared expert as a dense torch MLP
vs as an 11th fused expert, the routing kernel, the two decode paths (grouped GEMMs after one
route + align launch vs per-assignment GEMVs after routing, kernels/moe_gemv.py, with the
GEMV tile variants), the decode router kernel's warp counts, and (--sweep) alternative tile
configs of the grouped GEMMs. Decode batches (≤ 128 assignments) of the main table take the
default path (the GEMVs unless QNEXT_MOE_GEMV=0).

    python scripts/bench_moe.py [--sweep [SECONDS]]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
import triton.testing

from qnext.kernels import fused_moe_ref, moe_route_ref
from qnext.kernels import moe_gemv
from qnext.kernels.moe import MoeConfig, default_config, fused_moe
from qnext.kernels.moe_align import moe_align
from qnext.kernels.moe_route import moe_route
from qnext.kernels.moe_route_align import moe_route_align
from bench_common import copy_gbps, graph_us, rel_diff

H, E, TOPK = 2048, 512, 10
TOKENS = (1, 4, 16, 64, 256, 2048)


def _eager_us(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=60) * 1e3


def _weights(I: int, experts: int, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    w13 = torch.randn(experts, 2 * I, H, generator=gen, device="cuda", dtype=torch.bfloat16)
    w2 = torch.randn(experts, H, I, generator=gen, device="cuda", dtype=torch.bfloat16)
    return w13.mul_(H**-0.5), w2.mul_(I**-0.5)


def _tokens(T: int, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(T, H, generator=gen, device="cuda", dtype=torch.bfloat16)
    logits = torch.randn(T, E, generator=gen, device="cuda")
    return x, *moe_route(logits, TOPK, True)


def main_table(bw: float, weights: dict) -> None:
    print("| TP | I | T | experts touched | floor µs | qnext graph µs | qnext eager µs "
          "| ref µs | graph / floor | ref / qnext eager | rel. diff vs ref |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tp, I in ((1, 512), (4, 128)):
        w13, w2 = (w[:E] for w in weights[I])
        for T in TOKENS:
            x, tw, ids = _tokens(T, T)
            touched = ids.unique().numel()
            floor = touched * 3 * H * I * 2 / bw * 1e6
            ours = lambda: fused_moe(x, w13, w2, tw, ids)  # noqa: E731
            ref = lambda: fused_moe_ref(x, w13, w2, tw, ids)  # noqa: E731
            diff = rel_diff(ours(), ref())
            g, e, r = graph_us(ours), _eager_us(ours), _eager_us(ref)
            print(f"| {tp} | {I} | {T} | {touched} | {floor:.1f} | {g:.1f} | {e:.1f} | {r:.0f} | "
                  f"{g / floor:.2f} | {r / e:.0f} | {diff:.1e} |", flush=True)


def shared_table(weights: dict) -> None:
    """The whole MoE layer (router GEMV, routing, experts, shared expert; I = shared
    intermediate, as in Qwen3-Next) with the shared expert as a dense torch MLP + sigmoid
    gate vs fused as expert E (layers/moe.py: its gate is router row E, its slot written by
    moe_route), graph-timed."""
    print("\n| TP | T | router + routed top-10 graph µs | layer, dense shared graph µs "
          "| layer, fused shared graph µs |")
    print("|---|---|---|---|---|")
    for tp, I in ((1, 512), (4, 128)):
        w13, w2 = weights[I]
        wg, wu, wd = w13[E, :I], w13[E, I:], w2[E]
        router = torch.randn(E + 1, H, device="cuda", dtype=torch.bfloat16) * H**-0.5
        for T in (1, 16, 64, 256):
            x = _tokens(T, T)[0]

            def routed():
                tw, ids = moe_route(F.linear(x, router[:E]), TOPK, True)
                return fused_moe(x, w13[:E], w2[:E], tw, ids)

            def dense():
                mlp = F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)
                return routed() + torch.sigmoid(F.linear(x, router[E:])) * mlp

            def fused():
                tw, ids = moe_route(F.linear(x, router), TOPK, True, shared=True)
                return fused_moe(x, w13, w2, tw, ids)

            diff = rel_diff(fused(), dense())
            assert diff < 2e-2, diff
            print(f"| {tp} | {T} | {graph_us(routed):.1f} | {graph_us(dense):.1f} | "
                  f"{graph_us(fused):.1f} |", flush=True)


GEMV_TILES = [(4, 1024, 32, 128), (8, 256, 32, 128), (2, 2048, 32, 128), (4, 512, 64, 128),
              (4, 1024, 16, 128), (8, 1024, 64, 64)]


def decode_table(bw: float, weights: dict, sweep_tiles: bool) -> None:
    """Routing + the routed and fused shared experts of a decode batch, graph-timed: grouped
    GEMMs after one route + align launch, against the GEMVs after routing (and, sweep_tiles,
    the GEMVs' tile variants: the data that sets moe_gemv's tiles and QNEXT_MOE_GEMV)."""
    print("\n| TP | T | floor µs | route + align + grouped GEMMs µs | route + GEMVs µs "
          "| GEMV tiles (BN1, BK1, BN2, BK2): µs |")
    print("|---|---|---|---|---|---|")
    for tp, I in ((4, 128), (1, 512)):
        w13, w2 = weights[I]
        for T in (1, 4, 8, 11):
            x = _tokens(T, T)[0]
            logits = torch.randn(T, E + 1, device="cuda", dtype=torch.bfloat16)
            touched = moe_route(logits, TOPK, True, True)[1].unique().numel()

            def grouped():
                tw, ids, aligned = moe_route_align(logits, TOPK, True, True, 16)
                return fused_moe(x, w13, w2, tw, ids, MoeConfig(), aligned)

            def gemv(tiles=(moe_gemv.BN1, moe_gemv.BK1, moe_gemv.BN2, moe_gemv.BK2)):
                tw, ids = moe_route(logits, TOPK, True, True)
                y = torch.empty(ids.numel(), H, dtype=x.dtype, device="cuda")
                moe_gemv.expert_rows_gemv(x, w13, w2, tw, ids, y, tiles)
                return y

            diff = rel_diff(fused_moe(x, w13, w2, *moe_route(logits, TOPK, True, True),
                                      MoeConfig(gemv=True)), grouped())
            assert diff < 1e-2, diff
            tiles = "; ".join(f"{t}: {graph_us(lambda: gemv(t)):.1f}"  # noqa: B023
                              for t in GEMV_TILES) if sweep_tiles else "—"
            floor = touched * 3 * H * I * 2 / bw * 1e6
            print(f"| {tp} | {T} | {floor:.1f} | {graph_us(grouped):.1f} | "
                  f"{graph_us(gemv):.1f} | {tiles} |", flush=True)


ROUTER_TILES = [(4, 1024), (2, 2048), (4, 2048), (8, 512), (1, 2048)]


def router_table() -> None:
    """The decode router kernel (router GEMV + routing by the last program, 528 padded rows,
    top-10 + the shared expert's gate) with its warp counts and (4 warps) its tiles (rows a
    program, columns a step): the routing tail is serial (the model's default: 4 warps,
    (4, 1024))."""
    from qnext.kernels.moe_router import route_hidden

    warps = (1, 2, 4, 8)
    print("\n| T | " + " | ".join(f"route_hidden, {w} warps, graph µs" for w in warps) +
          " | " + " | ".join(f"tiles {t}, graph µs" for t in ROUTER_TILES) +
          " | router GEMM + moe_route, graph µs | tokens routed differently (bf16 ties) |")
    print("|---|" + "---|" * (len(warps) + len(ROUTER_TILES) + 2))
    gen = torch.Generator(device="cuda").manual_seed(5)
    weight = torch.randn(528, H, generator=gen, device="cuda", dtype=torch.bfloat16) * H**-0.5
    for T in (1, 4, 8):
        x = torch.randn(T, H, generator=gen, device="cuda", dtype=torch.bfloat16)
        want = moe_route(F.linear(x, weight)[:, :E + 1], TOPK, True, True)[1]
        times, differ = [], 0
        variants = [dict(num_warps=w) for w in warps] + [dict(tiles=t) for t in ROUTER_TILES]
        for v in variants:
            fn = lambda v=v: route_hidden(x, weight, E + 1, TOPK, True, True, **v)  # noqa: E731
            differ = max(differ, (fn()[1] != want).any(dim=1).sum().item())
            times.append(f"{graph_us(fn):.1f}")
        two = lambda: moe_route(F.linear(x, weight)[:, :E + 1], TOPK, True, True)  # noqa: E731
        print(f"| {T} | " + " | ".join(times) + f" | {graph_us(two):.1f} | {differ} |",
              flush=True)


def route_table() -> None:
    print("\n| T | moe_route graph µs | moe_route eager µs | moe_route_ref eager µs "
          "| tokens routed differently (bf16 ties) |")
    print("|---|---|---|---|---|")
    for T in (1, 64, 2048):
        logits = torch.randn(T, E, device="cuda", dtype=torch.bfloat16)
        ours = lambda: moe_route(logits, TOPK, True)  # noqa: E731
        ref = lambda: moe_route_ref(logits, TOPK, True)  # noqa: E731
        differ = (ours()[1] != ref()[1]).any(dim=1).sum().item()
        print(f"| {T} | {graph_us(ours):.1f} | {_eager_us(ours):.1f} | {_eager_us(ref):.1f} | "
              f"{differ} |", flush=True)
    print("\n| T | route + align, two launches, graph µs | one launch (moe_route_align) |")
    print("|---|---|---|")
    for T in (1, 4, 8, 11):  # Qwen3-Next: top-10 + the fused shared expert (E + 1 logit columns)
        logits = torch.randn(T, E + 1, device="cuda", dtype=torch.bfloat16)
        two = lambda: moe_align(moe_route(logits, TOPK, True, True)[1], E + 1, 16)  # noqa: E731
        one = lambda: moe_route_align(logits, TOPK, True, True, 16)  # noqa: E731
        print(f"| {T} | {graph_us(two):.1f} | {graph_us(one):.1f} |", flush=True)


SWEEP = {"decode": [dict(block_n1=16), dict(block_n1=32), dict(block_k1=64), dict(block_k1=256),
                    dict(block_n1=16, block_k1=256), dict(block_n2=32), dict(block_n2=128),
                    dict(num_stages=3), dict(num_stages=5), dict(num_warps=8)],
         "prefill": [dict(block_m=128), dict(block_n1=128), dict(num_warps=4),
                     dict(num_stages=4), dict(block_m=32)]}


def _sweep_deadline(start: float) -> float | None:
    """`--sweep [SECONDS]`: sweep until SECONDS after the start (no limit without SECONDS)."""
    if "--sweep" not in sys.argv:
        return None
    rest = sys.argv[sys.argv.index("--sweep") + 1:]
    return start + float(rest[0]) if rest else float("inf")


def sweep(weights: dict, deadline: float) -> None:
    print("\n| TP | T | config (changes from the default) | graph µs | rel. diff vs ref |")
    print("|---|---|---|---|---|")
    for tp, I in ((4, 128), (1, 512)):
        w13, w2 = (w[:E] for w in weights[I])
        for T in (1, 16, 64, 2048):
            x, tw, ids = _tokens(T, T)
            want = fused_moe_ref(x, w13, w2, tw, ids)
            base = default_config(T * TOPK, E, 2)
            kind = "prefill" if base.block_m > 16 else "decode"
            for change in [{}] + SWEEP[kind]:
                if time.time() > deadline:
                    return
                cfg = MoeConfig(**{**base.__dict__, **change})
                fn = lambda: fused_moe(x, w13, w2, tw, ids, cfg)  # noqa: E731
                diff = rel_diff(fn(), want)
                print(f"| {tp} | {T} | {change or base} | {graph_us(fn):.1f} | {diff:.1e} |",
                      flush=True)


def main() -> None:
    start = time.time()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}")
    bw = 1e9 * copy_gbps()
    print(f"HBM bandwidth (1 GiB device-to-device copy): {bw / 1e12:.2f} TB/s\n")
    weights = {I: _weights(I, E + 1, I) for I in (512, 128)}  # expert E: the shared expert
    main_table(bw, weights)
    shared_table(weights)
    deadline = _sweep_deadline(start)
    decode_table(bw, weights, True)
    if deadline is not None:
        sweep(weights, deadline)
    route_table()
    router_table()


if __name__ == "__main__":
    main()
