"""Benchmark (not a test): the decode GEMV (`kernels/gemv.py`) against cuBLAS (`F.linear`, the
anchor, same run) on the dense projections of Qwen3-Next-80B-A3B (H = 2048, bf16) at TP4 and
TP1, for 1, 4, 8 and 16 rows (tokens). Both graph-timed (median of replays, L2 flushed before
each, as a captured decode step sees them); the floor is the weight bytes over the copy
bandwidth of the same run. Prints a markdown table; it decides QNEXT_DENSE_GEMV.

    PYTHONPATH=$PWD:$PWD/scripts python scripts/bench_gemv.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton

from qnext.kernels.gemv import gemv
from bench_common import copy_gbps, graph_us, rel_diff

# (name, N, K) per rank: the GDN input projection (q, k, v, z + b, a), its output projection,
# attention's q (+ gate), k, v and o projections, the LM head's vocab shard
SHAPES = {4: [("gdn in", 3088, 2048), ("gdn out", 2048, 1024), ("attn qkv+gate", 2560, 2048),
              ("attn o", 2048, 1024), ("lm head", 37984, 2048)],
          1: [("gdn in", 12352, 2048), ("gdn out", 2048, 4096), ("attn qkv+gate", 9216, 2048),
              ("attn o", 2048, 4096)]}


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}")
    bw = 1e9 * copy_gbps()
    print(f"HBM bandwidth (1 GiB device-to-device copy): {bw / 1e12:.2f} TB/s\n")
    print("| TP | projection | N x K | rows | floor µs | cuBLAS µs | GEMV µs | cuBLAS / GEMV "
          "| rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for tp, shapes in SHAPES.items():
        for name, N, K in shapes:
            w = (torch.randn(N, K, generator=gen, device="cuda") * K**-0.5).to(torch.bfloat16)
            floor = N * K * 2 / bw * 1e6
            for M in (1, 4, 8, 16):
                x = torch.randn(M, K, generator=gen, device="cuda").to(torch.bfloat16)
                ref, ours = graph_us(lambda: F.linear(x, w)), graph_us(lambda: gemv(x, w))
                diff = rel_diff(gemv(x, w), F.linear(x, w))
                print(f"| {tp} | {name} | {N} x {K} | {M} | {floor:.1f} | {ref:.1f} | "
                      f"{ours:.1f} | {ref / ours:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
