"""Benchmark (not a test): the Triton gated-delta-rule decode kernel vs flash-linear-attention's
fused_recurrent_gated_delta_rule (the anchor), Qwen3-Next shapes (Hv value heads, Hk = Hv/2 key
heads, d = 128, fp32 state), on one GPU. Prints a markdown table.

qnext updates the pool in place by slot (gather + scatter fused). The anchor gets its states
already gathered ([B, Hv, dk, dv]) and writes final states to a new tensor; its output is
checked against qnext's before timing. At Hv = 8 (TP4) the anchor is not run: FLA 0.6.0 hit
an illegal memory access there on H100 (it would poison the CUDA context).

qnext is also timed replayed from a CUDA graph (L2 flushed before each replay), as a decode
step runs it; the state traffic is read against the copy bandwidth of the same run. Then the
step with the GDN output norm, inside the kernel (`norm=`, what the model runs) and as the
separate `gated_rms_norm` launch after it, graph-timed; and, last, a graph-timed device copy
of the step's state bytes. The issue's "≥ 85 % of the copy bandwidth" reads the 1 GiB copy,
which a step over 34-134 MB of state (B = 64) may not reach even as a plain copy; the last
column says how close the kernel is to what its size allows.

    PYTHONPATH=$PWD:$PWD/scripts python scripts/bench_gdn_decode.py [--sweep]

--sweep: instead, qnext alone, graph-timed, over the launcher's block_v and num_warps at
B = 64 and 256 (the bandwidth target's batches), as a fraction of the copy bandwidth.
"""

from __future__ import annotations

import sys

import torch
import triton.testing

from qnext.kernels.gdn_decode import gdn_decode
from qnext.kernels.norm import gated_rms_norm
from bench_common import copy_gbps, graph_us


def _case(B: int, hv: int, slots_per_seq: int = 2, d: int = 128):
    hk = hv // 2
    gen = torch.Generator(device="cuda").manual_seed(B * 100 + hv)

    def r(*shape, dt=torch.bfloat16):
        return torch.randn(*shape, generator=gen, device="cuda").to(dt)

    x = dict(q=r(B, hk, d), k=r(B, hk, d), v=r(B, hv, d), a=r(B, hv), b=r(B, hv),
             A_log=torch.log(torch.rand(hv, generator=gen, device="cuda") * 0.9 + 0.1),
             dt_bias=r(hv, dt=torch.float32))
    states = r(B * slots_per_seq + 1, hv, d, d, dt=torch.float32) * 0.1
    slots = torch.randperm(B * slots_per_seq, generator=gen, device="cuda")[:B] + 1
    return x, states, slots


def _fla(x, states, slots, fused_gates: bool):
    """The anchor call; with `fused_gates` FLA computes g and beta in its kernel like qnext,
    else they are precomputed outside the timed call (FLA's usual form)."""
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    from qnext.kernels import gdn_gating_ref

    init = states[slots]
    q, k, v = x["q"][:, None], x["k"][:, None], x["v"][:, None]
    if fused_gates:
        return lambda: fused_recurrent_gated_delta_rule(
            q, k, v, g=x["a"][:, None], beta=x["b"][:, None], initial_state=init,
            output_final_state=True, use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
            A_log=x["A_log"], dt_bias=x["dt_bias"], use_beta_sigmoid_in_kernel=True)
    g, beta = gdn_gating_ref(x["A_log"], x["a"], x["b"], x["dt_bias"])
    g, beta = g[:, None].contiguous(), beta[:, None].to(q.dtype).contiguous()
    return lambda: fused_recurrent_gated_delta_rule(
        q, k, v, g=g, beta=beta, initial_state=init, output_final_state=True,
        use_qk_l2norm_in_kernel=True)


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}")
    gbps = copy_gbps()
    print(f"HBM copy bandwidth (1 GiB device-to-device, same run): {gbps:.0f} GB/s\n")
    print("| B | Hv | qnext µs | qnext graph µs | FLA fused gates µs "
          "| FLA precomputed gates µs | best FLA / qnext | qnext state GB/s (graph) "
          "| of copy bw | rel. diff vs FLA | + norm inside graph µs | + norm after graph µs "
          "| same-size copy graph µs | of same-size copy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for hv, batches in ((32, (1, 32, 64, 128, 256)), (8, (1, 32, 64, 256))):
        for B in batches:
            x, states, slots = _case(B, hv)
            ours = lambda: gdn_decode(**x, ssm_states=states, state_indices=slots)  # noqa: E731
            us = triton.testing.do_bench(ours, warmup=50, rep=300) * 1e3
            in_graph = graph_us(ours)
            traffic = 2 * B * hv * 128 * 128 * 4 / (in_graph * 1e-6) / 1e9
            cells = ["—", "—", "—", "—"]
            if hv > 8:
                got = gdn_decode(**x, ssm_states=states.clone(), state_indices=slots)
                times, diffs = [], []
                for fused in (True, False):
                    fla = _fla(x, states.clone(), slots, fused)
                    want = fla()[0][:, 0].float()
                    diffs.append(((got.float() - want).norm() / want.norm()).item())
                    times.append(triton.testing.do_bench(fla, warmup=50, rep=300) * 1e3)
                cells = [f"{times[0]:.1f}", f"{times[1]:.1f}", f"{min(times) / us:.2f}",
                         f"{max(diffs):.1e}"]
            normed = _with_norm(x, states, slots)
            copy_us = _copy_us(B * hv * 128 * 128 * 4)
            print(f"| {B} | {hv} | {us:.1f} | {in_graph:.1f} | {cells[0]} | {cells[1]} | "
                  f"{cells[2]} | {traffic:.0f} | {traffic / gbps:.0%} | {cells[3]} | "
                  f"{normed[0]:.1f} | {normed[1]:.1f} | {copy_us:.1f} | "
                  f"{copy_us / in_graph:.0%} |", flush=True)


def _copy_us(nbytes: int) -> float:
    """Graph-timed device-to-device copy of the step's state bytes (read + write as the
    kernel's): what a memory-bound kernel of this size can reach, launch and tail included."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return graph_us(lambda: dst.copy_(src))


def _with_norm(x, states, slots) -> tuple[float, float]:
    """Graph µs of the step with the output norm fused, and with it as a launch after."""
    v = x["v"]
    z = torch.randn(v.shape, device="cuda").to(v.dtype)
    w = (torch.rand(v.shape[-1], device="cuda") + 0.5).to(v.dtype)
    inside = lambda: gdn_decode(**x, ssm_states=states, state_indices=slots,  # noqa: E731
                                norm=(z, w, 1e-6))
    after = lambda: gated_rms_norm(  # noqa: E731
        gdn_decode(**x, ssm_states=states, state_indices=slots), z, w, 1e-6)
    return graph_us(inside), graph_us(after)


def sweep() -> None:
    gbps = copy_gbps()
    print(f"{torch.cuda.get_device_name()}; copy bandwidth {gbps:.0f} GB/s; graph-timed µs "
          "(fraction of copy bw)\n")
    knobs = [(bv, w) for bv in (16, 32, 64, 128) for w in (1, 2, 4, 8, 16)
             if bv * 128 // (32 * w) <= 128]  # at most 128 state floats a thread
    print("| B | Hv | " + " | ".join(f"bv {bv}, {w} warps" for bv, w in knobs) + " |")
    print("|---|---|" + "---|" * len(knobs))
    for hv, B in ((32, 64), (32, 256), (8, 64), (8, 256)):
        x, states, slots = _case(B, hv)
        cells = []
        for bv, w in knobs:
            fn = lambda: gdn_decode(**x, ssm_states=states, state_indices=slots,  # noqa: E731
                                    block_v=bv, num_warps=w)
            us = graph_us(fn)
            share = 2 * B * hv * 128 * 128 * 4 / (us * 1e-6) / 1e9 / gbps
            cells.append(f"{us:.1f} ({share:.0%})")
        print(f"| {B} | {hv} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    sweep() if "--sweep" in sys.argv else main()
