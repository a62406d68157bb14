"""Benchmark (not a test): the Triton verify kernels of speculative decoding (T draft tokens per
sequence, chains, the pool untouched, every step's state written to an intermediate buffer) at
Qwen3-Next shapes on one GPU. Prints two markdown tables.

Gated delta rule (bf16 q/k/v/gates, fp32 pool and intermediates, d = 128, Hv:Hk 32:16 and
TP4's 8:4): the floor is (state read once + T state writes) / the HBM bandwidth of a large
device copy measured in the same run. Reference points, same run: `gdn_decode` called T times
(it updates a scratch pool in place) and, at Hv = 32 only, FLA 0.6.0's
`fused_recurrent_gated_delta_rule` over the T tokens of the chain with fused gates — it gives
only the final state, not the T intermediate ones, so it writes T-1 fewer states. (At Hv = 8
FLA 0.6.0 hit an illegal memory access on H100, which would poison the CUDA context.)
Conv1d (bf16, width 4, SiLU): `conv_verify` vs `conv_decode` called T times.

    PYTHONPATH=$PWD:/tmp/anchor python3 scripts/bench_verify.py [--sweep]

--sweep: instead, the delta-rule verify's tile settings (value columns a program, warps),
graph-timed with L2 flushed, against the floor.
"""

from __future__ import annotations

import torch
import triton.testing

from qnext.kernels.conv_decode import conv_decode
from qnext.kernels.conv_verify import conv_verify
from qnext.kernels.gdn_decode import gdn_decode
from qnext.kernels.gdn_verify import gdn_verify
from bench_common import copy_gbps, graph_us, rel_diff

T = 4
D = 128


def _us(fn) -> float:
    """Median µs per call, L2 flushed between calls, Python launch included."""
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median") * 1e3


def _graph_us(fn) -> float:
    """Median µs per call replayed from a CUDA graph: no launch cost, L2 not flushed."""
    return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3


def _gdn_case(B: int, hv: int):
    hk = hv // 2
    gen = torch.Generator(device="cuda").manual_seed(B * 100 + hv)

    def r(*shape, dt=torch.bfloat16):
        return torch.randn(*shape, generator=gen, device="cuda").to(dt)

    x = dict(q=r(B, T, hk, D), k=r(B, T, hk, D), v=r(B, T, hv, D), a=r(B, T, hv),
             b=r(B, T, hv), dt_bias=r(hv, dt=torch.float32),
             A_log=torch.log(torch.rand(hv, generator=gen, device="cuda") * 0.9 + 0.1))
    pool = r(2 * B + 1, hv, D, D, dt=torch.float32) * 0.1
    slots = torch.randperm(2 * B, generator=gen, device="cuda")[:B] + 1
    return x, pool, slots


def _decode_steps(x: dict, pool: torch.Tensor, slots: torch.Tensor):
    """A closure running gdn_decode over the T tokens in turn on `pool` (updated in place)."""
    steps = [{n: t[:, i] if t.dim() > 1 else t for n, t in x.items()} for i in range(T)]

    def run():
        return [gdn_decode(**s, ssm_states=pool, state_indices=slots) for s in steps]
    return run


def _fla_chain(x: dict, init: torch.Tensor):
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    return lambda: fused_recurrent_gated_delta_rule(
        x["q"], x["k"], x["v"], g=x["a"], beta=x["b"], initial_state=init,
        output_final_state=True, use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
        A_log=x["A_log"], dt_bias=x["dt_bias"], use_beta_sigmoid_in_kernel=True)


def gdn_row(B: int, hv: int, gbps: float) -> str:
    x, pool, slots = _gdn_case(B, hv)
    inter = torch.empty(B, T, hv, D, D, device="cuda")
    verify = lambda: gdn_verify(**x, ssm_states=pool, state_indices=slots,  # noqa: E731
                                intermediate_states=inter)
    o = verify()
    scratch = pool.clone()
    decode = _decode_steps(x, scratch, slots)
    want = torch.stack(decode(), dim=1)
    diff_dec = max(rel_diff(o, want), rel_diff(inter[:, -1], scratch[slots]))
    state_bytes = B * hv * D * D * 4
    floor = (1 + T) * state_bytes / (gbps * 1e9) * 1e6
    cells = [f"{floor:.1f}", f"{_us(verify):.1f}", f"{_graph_us(verify):.1f}",
             f"{_us(decode):.1f}", f"{_graph_us(decode):.1f}"]
    if hv == 32:
        fla = _fla_chain(x, pool[slots])
        fo, fstate = fla()
        diff = max(rel_diff(o, fo), rel_diff(inter[:, -1], fstate))
        cells += [f"{_us(fla):.1f}", f"{diff:.1e}"]
    else:
        cells += ["—", "—"]
    return f"| {B} | {hv}:{hv // 2} | {T} | " + " | ".join(cells) + f" | {diff_dec:.1e} |"


def conv_row(B: int, C: int) -> str:
    gen = torch.Generator(device="cuda").manual_seed(B + C)
    x = torch.randn(B, T, C, generator=gen, device="cuda").bfloat16()
    w = torch.randn(C, 4, generator=gen, device="cuda").bfloat16()
    pool = torch.randn(2 * B + 1, C, 3, generator=gen, device="cuda").bfloat16()
    slots = torch.randperm(2 * B, generator=gen, device="cuda")[:B] + 1
    inter = torch.empty(B, T, C, 3, device="cuda", dtype=torch.bfloat16)
    verify = lambda: conv_verify(x, w, conv_states=pool, state_indices=slots,  # noqa: E731
                                 intermediate_states=inter)
    scratch = pool.clone()
    xs = [x[:, t] for t in range(T)]
    decode = lambda: [conv_decode(xt, w, conv_states=scratch, state_indices=slots)  # noqa
                      for xt in xs]
    diff = rel_diff(verify(), torch.stack(decode(), dim=1))
    return (f"| {B} | {C} | {T} | {_us(verify):.1f} | {_graph_us(verify):.1f} | "
            f"{_us(decode):.1f} | {_graph_us(decode):.1f} | {diff:.1e} |")


def main() -> None:
    gbps = copy_gbps()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}; 1 GiB device copy: {gbps:.0f} GB/s\n")
    print("| B | Hv:Hk | T | floor µs | verify µs | verify µs (graph) | decode ×T µs | "
          "decode ×T µs (graph) | FLA chain µs | rel. diff vs FLA | rel. diff vs decode ×T |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for hv in (32, 8):
        for B in (1, 16, 64):
            print(gdn_row(B, hv, gbps))
    print("\n| B | channels | T | conv verify µs | conv verify µs (graph) | conv decode ×T µs | "
          "conv decode ×T µs (graph) | rel. diff vs decode ×T |")
    print("|---|---|---|---|---|---|---|---|")
    for C in (8192, 2048):
        for B in (1, 16, 64):
            print(conv_row(B, C))


def sweep() -> None:
    """The delta-rule verify alone over its tile (value columns a program, warps), replayed
    from a graph with L2 flushed before each replay (`bench_common.graph_us`), against the
    floor; each setting's relative difference from the default's outputs and states is
    printed when not 0."""
    gbps = copy_gbps()
    knobs = [(32, 2), (32, 4), (64, 4), (64, 8), (128, 8)]
    print(f"{torch.cuda.get_device_name()}; copy {gbps:.0f} GB/s; graph µs (share of floor)\n")
    print("| B | Hv:Hk | floor µs | " + " | ".join(f"bv {bv}, {w} warps" for bv, w in knobs)
          + " |")
    print("|---|---|---|" + "---|" * len(knobs))
    for hv in (32, 8):
        for B in (16, 64, 256):
            x, pool, slots = _gdn_case(B, hv)
            floor = (1 + T) * B * hv * D * D * 4 / (gbps * 1e9) * 1e6
            inter = torch.empty(B, T, hv, D, D, device="cuda")
            want = gdn_verify(**x, ssm_states=pool, state_indices=slots,
                              intermediate_states=inter), inter.clone()
            cells = []
            for bv, w in knobs:
                def run(bv=bv, w=w):
                    return gdn_verify(**x, ssm_states=pool, state_indices=slots,
                                      intermediate_states=inter, block_v=bv, num_warps=w)
                diff = max(rel_diff(run(), want[0]), rel_diff(inter, want[1]))
                us = graph_us(run)
                cells.append(f"{us:.1f} ({floor / us:.0%})" + (f", {diff:.0e}" if diff else ""))
            print(f"| {B} | {hv}:{hv // 2} | {floor:.1f} | " + " | ".join(cells) + " |",
                  flush=True)


if __name__ == "__main__":
    import sys

    sweep() if "--sweep" in sys.argv else main()
