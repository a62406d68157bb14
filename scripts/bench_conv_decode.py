"""Benchmark (not a test): the Triton conv1d decode kernel vs flash-linear-attention's
causal_conv1d_update (the anchor, same run), Qwen3-Next's GDN conv (channels 8192 at TP1,
2048 at TP4, width 4, bf16, SiLU). qnext updates the state pool in place by slot; the anchor
updates a gathered [B, C, 4] cache. Prints a markdown table (triton.testing.do_bench).

    python scripts/bench_conv_decode.py
"""

from __future__ import annotations

import torch
import triton.testing

from qnext.kernels.conv_decode import conv_decode


def main() -> None:
    from fla.modules.causal_conv1d import causal_conv1d_update

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}")
    print("| B | channels | qnext µs | FLA µs | FLA / qnext | rel. diff vs FLA |")
    print("|---|---|---|---|---|---|")
    for C in (8192, 2048):
        for B in (1, 32, 256):
            x = torch.randn(B, C, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(C, 4, device="cuda", dtype=torch.bfloat16)
            states = torch.randn(2 * B + 1, C, 3, device="cuda", dtype=torch.bfloat16)
            slots = torch.randperm(2 * B, device="cuda")[:B] + 1
            # the anchor's cache holds the last 4 inputs; its first column is dropped
            cache = torch.cat([torch.zeros(B, C, 1, device="cuda", dtype=torch.bfloat16),
                               states[slots]], dim=-1)
            got = conv_decode(x, w, conv_states=states.clone(), state_indices=slots)
            want = causal_conv1d_update(x, cache.clone(), weight=w, activation="silu")[0]
            ours = lambda: conv_decode(x, w, conv_states=states, state_indices=slots)  # noqa
            fla = lambda: causal_conv1d_update(x, cache, weight=w, activation="silu")  # noqa
            diff = ((got.float() - want.float()).norm() / want.float().norm()).item()
            us = triton.testing.do_bench(ours, warmup=50, rep=300) * 1e3
            fla_us = triton.testing.do_bench(fla, warmup=50, rep=300) * 1e3
            print(f"| {B} | {C} | {us:.1f} | {fla_us:.1f} | {fla_us / us:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
