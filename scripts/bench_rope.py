"""Benchmark (not a test): the Triton partial-RoPE kernel (`kernels/rope.py`, in place) vs the
torch reference path the layers used before it (`rope_cos_sin_ref` + `apply_rope_ref` on q
and on k, new tensors), same run. Qwen3-Next's full-attention shapes at TP1: Hq = 16,
Hkv = 2, D = 256, rotary_dim = 64, theta 1e7, bf16; q contiguous (the q-norm output), and
once as the strided [q | gate] view. Positions random below 256K. Outputs compared before
timing. The bytes floor is the rotated dims read and written, (Hq + Hkv) * 64 * 2 B * 2 per
token, at the HBM copy bandwidth measured in the same run. Times: triton.testing.do_bench
medians, Python launch included, and the kernel replayed from a CUDA graph (L2 flushed before
each replay, `bench_common.graph_us`: what a captured step pays, without the launch noise of
small batches).

    python scripts/bench_rope.py
"""

from __future__ import annotations

import torch
import triton.testing

from qnext.kernels import apply_rope_ref, rope_cos_sin_ref
from qnext.kernels.rope import apply_rope
from bench_common import copy_gbps, graph_us, rel_diff

HQ, HKV, D, R, THETA, DT = 16, 2, 256, 64, 1e7, torch.bfloat16


def _ref(q, k, positions):
    cos, sin = rope_cos_sin_ref(positions, R, THETA, q.dtype)
    return apply_rope_ref(q, cos, sin), apply_rope_ref(k, cos, sin)


def _row(T: int, strided_q: bool, gbps: float) -> None:
    gen = torch.Generator(device="cuda").manual_seed(T)
    proj = torch.randn(T, HQ, 2 * D, generator=gen, device="cuda").to(DT)
    q = proj[..., :D] if strided_q else proj[..., :D].contiguous()
    k = torch.randn(T, HKV, D, generator=gen, device="cuda").to(DT)
    positions = torch.randint(0, 1 << 18, (T,), generator=gen, device="cuda")
    want_q, want_k = _ref(q, k, positions)
    got_q, got_k = apply_rope(q.clone(), k.clone(), positions, rotary_dim=R, theta=THETA)
    diff = max(rel_diff(got_q, want_q), rel_diff(got_k, want_k))
    # in place: repeated calls keep rotating the same tensors (values stay bounded)
    ours = lambda: apply_rope(q, k, positions, rotary_dim=R, theta=THETA)  # noqa: E731
    us = triton.testing.do_bench(ours, warmup=50, rep=300) * 1e3
    graph = graph_us(ours)
    ref_us = triton.testing.do_bench(lambda: _ref(q, k, positions), warmup=20, rep=300) * 1e3
    floor_us = T * (HQ + HKV) * R * 2 * 2 / gbps / 1e3
    print(f"| {T} | {'strided view' if strided_q else 'contiguous'} | {us:.1f} | {graph:.1f} | "
          f"{floor_us:.2f} | {floor_us / graph:.0%} | {ref_us:.1f} | {ref_us / us:.2f} | "
          f"{diff:.1e} |")


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}")
    gbps = copy_gbps()
    print(f"HBM copy bandwidth (1 GiB device copy, same run): {gbps:.0f} GB/s\n")
    print("| tokens | q layout | qnext µs | qnext graph µs | floor µs | floor / graph | "
          "torch ref µs | ref / qnext | rel. diff vs ref |")
    print("|---|---|---|---|---|---|---|---|---|")
    for T in (1, 16, 64, 256, 1024, 8192):
        _row(T, False, gbps)
    _row(8192, True, gbps)


if __name__ == "__main__":
    main()
