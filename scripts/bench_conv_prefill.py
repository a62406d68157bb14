"""Benchmark (not a test): the Triton varlen conv1d prefill kernel (`kernels/conv_prefill.py`)
vs, in the same run, the torch reference `causal_conv1d_varlen_ref` and flash-linear-attention
0.6.0's varlen `causal_conv1d` (the anchor). Qwen3-Next's GDN conv: width 4, SiLU, bf16,
8192 channels (TP1) and 2048 (TP4); 1K / 8K / 64K tokens as one sequence and as sequences of
128 tokens (every other one with an initial state). qnext reads and writes the state pool in
place by slot; FLA gets the initial states gathered as [N, C, 4] (outside the timed call) and
returns the final states as a new tensor. Outputs are compared before timing.

The bytes floor is read x + write y + read / write the states (+ weight) at the HBM copy
bandwidth measured in the same run (a 1 GiB device-to-device copy). A second table sweeps
the block sizes at 8K tokens, 8192 channels. Times: triton.testing.do_bench medians, Python
launch included. `--no-fla` skips the anchor (should it fail on this machine).

    python scripts/bench_conv_prefill.py [--no-fla]
"""

from __future__ import annotations

import sys

import torch
import triton.testing

from qnext.kernels import causal_conv1d_varlen_ref
from qnext.kernels.conv_prefill import conv_prefill
from bench_common import copy_gbps, rel_diff

DT = torch.bfloat16


def _case(T: int, C: int, seq_len: int):
    lengths = [seq_len] * (T // seq_len)
    B = len(lengths)
    gen = torch.Generator(device="cuda").manual_seed(T + C + B)
    cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
    args = dict(x=torch.randn(T, C, generator=gen, device="cuda").to(DT),
                weight=torch.randn(C, 4, generator=gen, device="cuda").to(DT) * 0.5,
                cu_seqlens=cu, state_indices=torch.randperm(2 * B, device="cuda")[:B] + 1,
                has_initial_state=torch.arange(B, device="cuda") % 2 == 0)
    states = torch.randn(2 * B + 1, C, 3, generator=gen, device="cuda").to(DT)
    return args, states


def _floor_bytes(T: int, C: int, B: int) -> int:
    return 2 * (2 * T * C + 2 * B * C * 3 + 4 * C)  # x, y, states in and out, weight; bf16


def _fla(args, states):
    """The anchor call on gathered [N, C, 4] initial states (zeros where none)."""
    from fla.modules.causal_conv1d import causal_conv1d

    init = states[args["state_indices"]] * args["has_initial_state"][:, None, None]
    init = torch.cat([torch.zeros_like(init[..., :1]), init], dim=-1)
    cu = args["cu_seqlens"].long()
    cu_cpu = cu.cpu()
    x = args["x"][None]
    return lambda: causal_conv1d(x, args["weight"], initial_state=init,
                                 output_final_state=True, activation="silu", cu_seqlens=cu,
                                 cu_seqlens_cpu=cu_cpu)


def _fla_cols(args, states, got, our_states, us: float) -> str:
    """FLA µs | FLA / qnext | rel. diff vs FLA (final states included); dashes if skipped."""
    if "--no-fla" in sys.argv:
        return "— | — | —"
    fla = _fla(args, states)
    fla_y, fla_final = fla()
    diff = max(rel_diff(got, fla_y[0]),
               rel_diff(our_states[args["state_indices"]], fla_final[..., 1:]))
    fla_us = triton.testing.do_bench(fla, warmup=25, rep=200) * 1e3
    return f"{fla_us:.1f} | {fla_us / us:.2f} | {diff:.1e}"


def _row(T: int, C: int, seq_len: int, gbps: float) -> None:
    args, states = _case(T, C, seq_len)
    B = args["state_indices"].shape[0]
    ref_states, our_states = states.clone(), states.clone()
    want = causal_conv1d_varlen_ref(**args, conv_states=ref_states)
    got = conv_prefill(**args, conv_states=our_states)
    diff_ref = max(rel_diff(got, want), rel_diff(our_states, ref_states))
    fla_init = states.clone()  # the anchor starts from the same states as the two above
    ours = lambda: conv_prefill(**args, conv_states=states)  # noqa: E731
    ref = lambda: causal_conv1d_varlen_ref(**args, conv_states=ref_states)  # noqa: E731
    us = triton.testing.do_bench(ours, warmup=25, rep=200) * 1e3
    fla_cols = _fla_cols(args, fla_init, got, our_states, us)
    ref_us = triton.testing.do_bench(ref, warmup=2, rep=50) * 1e3
    floor_us = _floor_bytes(T, C, B) / gbps / 1e3
    print(f"| {C} | {T} | {B} | {us:.1f} | {floor_us:.1f} | {floor_us / us:.0%} | "
          f"{fla_cols} | {ref_us:.0f} | {diff_ref:.1e} |")


def _sweep(gbps: float) -> None:
    args, states = _case(8192, 8192, 8192)
    floor_us = _floor_bytes(8192, 8192, 1) / gbps / 1e3
    print(f"\nBlock sizes, 8192 tokens (1 sequence), 8192 channels; floor {floor_us:.1f} µs\n")
    print("| block_t | block_c | warps | µs | floor / µs |")
    print("|---|---|---|---|---|")
    # FLA's kernel: 64-token tiles, channel tiles 16..128, 4..32 warps (autotuned)
    for bt, bc, warps in [(16, 128, 4), (32, 128, 4), (32, 64, 4), (32, 128, 8),
                          (64, 64, 8), (64, 128, 8), (64, 128, 16), (64, 32, 4),
                          (128, 64, 16), (16, 128, 8)]:
        run = lambda: conv_prefill(**args, conv_states=states, block_t=bt,  # noqa: E731
                                   block_c=bc, num_warps=warps)
        us = triton.testing.do_bench(run, warmup=25, rep=200) * 1e3
        print(f"| {bt} | {bc} | {warps} | {us:.1f} | {floor_us / us:.0%} |", flush=True)


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}")
    gbps = copy_gbps()
    print(f"HBM copy bandwidth (1 GiB device copy, same run): {gbps:.0f} GB/s\n")
    print("| channels | tokens | seqs | qnext µs | floor µs | floor / qnext | FLA µs | "
          "FLA / qnext | rel. diff vs FLA | torch ref µs | rel. diff vs ref |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for C in (8192, 2048):
        for T in (1024, 8192, 65536):
            for seq_len in (T, 128):
                _row(T, C, seq_len, gbps)
    _sweep(gbps)


if __name__ == "__main__":
    main()
