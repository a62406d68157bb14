"""Benchmark (not a test): the Triton RMSNorm kernels vs flash-linear-attention's (the anchor,
same run) at Qwen3-Next shapes, bf16: residual add + zero-centred RMSNorm over hidden 2048
(FLA `rms_norm(..., residual, prenorm=True)` with weight 1 + w precomputed), and the gated
RMSNorm over GDN heads (rows = tokens x 32 heads, width 128; FLA `rms_norm_gated`, swish).
Prints a markdown table; times from triton.testing.do_bench.

    python scripts/bench_norms.py
"""

from __future__ import annotations

import torch
import triton.testing

from qnext.kernels.norm import add_rms_norm, gated_rms_norm


def _rand(*shape):
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)


def main() -> None:
    from fla.modules.norm.fused_norm_gate import rms_norm_gated
    from fla.modules.norm.layernorm import rms_norm

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}")
    print("| kernel | tokens | qnext µs | FLA µs | FLA / qnext | rel. diff vs FLA |")
    print("|---|---|---|---|---|---|")
    for tokens in (1, 32, 256, 8192):
        x, r, w = _rand(tokens, 2048), _rand(tokens, 2048), _rand(2048) * 0.1
        ours = lambda: add_rms_norm(x, w, 1e-6, residual=r)  # noqa: E731
        one_plus = (1.0 + w.float()).to(torch.bfloat16)
        fla = lambda: rms_norm(x, one_plus, None, residual=r, eps=1e-6, prenorm=True)  # noqa
        _row("add + RMSNorm (2048)", tokens, ours, fla, ours()[0], fla()[0])
    for tokens in (1, 32, 256, 8192):
        x, z, w = _rand(tokens * 32, 128), _rand(tokens * 32, 128), 1.0 + _rand(128) * 0.1
        ours = lambda: gated_rms_norm(x, z, w, 1e-6)  # noqa: E731
        fla = lambda: rms_norm_gated(x, z, w, None, "swish", eps=1e-6)  # noqa: E731
        _row("gated RMSNorm (32 x 128)", tokens, ours, fla, ours(), fla())


def _row(name, tokens, ours, fla, got, want) -> None:
    us = triton.testing.do_bench(ours, warmup=50, rep=300) * 1e3
    fla_us = triton.testing.do_bench(fla, warmup=50, rep=300) * 1e3
    diff = ((got.float() - want.float()).norm() / want.float().norm()).item()
    print(f"| {name} | {tokens} | {us:.1f} | {fla_us:.1f} | {fla_us / us:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
