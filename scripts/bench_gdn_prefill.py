"""Benchmark (not a test): the Triton chunked prefill of the gated delta rule vs
flash-linear-attention's chunk_gated_delta_rule (the anchor), Qwen3-Next shapes (Hv value heads,
Hk = Hv / 2 key heads, d = 128, bf16 q/k/v, fp32 state), on one GPU. Prints a markdown table.

qnext fuses the gates and the q/k L2 norm and updates the state pool in place by slot. The
anchor gets its initial states already gathered ([N, Hv, dk, dv]) and returns final states in
a new tensor; it runs twice: with g and beta precomputed outside the timed call (FLA's usual
form) and with the gates fused in its kernels (use_gate_in_kernel, use_beta_sigmoid_in_kernel).
Its output is checked against the torch reference (4K-token cases) and against qnext's (all
cases) before timing. The Hv = 8 anchor runs last, in a subprocess: FLA 0.6.0 hit an illegal
memory access at 8 value heads on H100 before, which would poison this process's CUDA context.

    python scripts/bench_gdn_prefill.py            # the table (qnext's variants, FLA)
    python scripts/bench_gdn_prefill.py --no-anchor  # the same without FLA
    python scripts/bench_gdn_prefill.py --sweep    # launcher knobs and a per-kernel breakdown
    (either with --fp32-dots: qnext with float32 dots instead of bf16, see kernels/gdn_prefill.py)
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch
import triton.testing

from qnext.kernels import chunk_gated_delta_rule_ref, gdn_gating_ref
from qnext.kernels.gdn_prefill import gdn_prefill
from bench_common import rel_diff

D, HBM_BYTES_S, BF16_FLOPS_S = 128, 3.35e12, 989e12  # H100 SXM peaks
ANCHOR_TIMEOUT_S = 240
FAST_DOTS = "--fp32-dots" not in sys.argv  # bf16 dots (the default) or float32 dots
# qnext's launcher pipelines (kernels/gdn_prefill.py), the default first
VARIANTS = {name: dict(pipeline=name) for name in ("lite", "fused", "split")}
CASES = [(32, [4096]), (32, [1024] * 4), (32, [16384]), (32, [4096] * 4), (32, [65536]),
         (32, [4096] * 16), (8, [4096]), (8, [16384]), (8, [4096] * 4), (8, [65536]),
         (8, [4096] * 16)]


def _case(hv: int, lengths: list[int]):
    hk, T, B = hv // 2, sum(lengths), len(lengths)
    gen = torch.Generator(device="cuda").manual_seed(T + hv)

    def r(*shape, dt=torch.bfloat16):
        return torch.randn(*shape, generator=gen, device="cuda").to(dt)

    x = dict(q=r(T, hk, D), k=r(T, hk, D), v=r(T, hv, D), a=r(T, hv), b=r(T, hv),
             A_log=torch.log(torch.rand(hv, generator=gen, device="cuda") * 0.9 + 0.1),
             dt_bias=r(hv, dt=torch.float32))
    states = r(2 * B + 1, hv, D, D, dt=torch.float32) * 0.1
    slots = torch.randperm(2 * B, generator=gen, device="cuda")[:B] + 1
    cu = torch.tensor([0] + lengths, device="cuda").cumsum(0)
    kw = dict(cu_seqlens=cu.to(torch.int32), ssm_states=states, state_indices=slots,
              has_initial_state=torch.ones(B, dtype=torch.bool, device="cuda"))
    return x, kw


def _ours(x, kw, **knobs):
    knobs.setdefault("fast_dots", FAST_DOTS)
    return lambda: gdn_prefill(**x, **kw, **knobs)


def _fla(x, kw, fused_gates: bool):
    """The anchor call on gathered initial states (a copy: the pool is left alone)."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    init = kw["ssm_states"][kw["state_indices"]]
    q, k, v = x["q"][None], x["k"][None], x["v"][None]
    common = dict(initial_state=init, output_final_state=True, use_qk_l2norm_in_kernel=True,
                  cu_seqlens=kw["cu_seqlens"].long())
    if fused_gates:
        return lambda: chunk_gated_delta_rule(
            q, k, v, g=x["a"][None], beta=x["b"][None], use_gate_in_kernel=True,
            A_log=x["A_log"], dt_bias=x["dt_bias"], use_beta_sigmoid_in_kernel=True, **common)
    g, beta = gdn_gating_ref(x["A_log"], x["a"], x["b"], x["dt_bias"])
    g, beta = g[None].contiguous(), beta[None].to(q.dtype).contiguous()
    return lambda: chunk_gated_delta_rule(q, k, v, g=g, beta=beta, **common)


def _time(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


def _reference(x, kw):
    states = kw["ssm_states"].clone()
    g, beta = gdn_gating_ref(x["A_log"], x["a"], x["b"], x["dt_bias"])
    return chunk_gated_delta_rule_ref(x["q"], x["k"], x["v"], g, beta,
                                      **{**kw, "ssm_states": states})


def _anchor(hv: int, lengths: list[int]) -> dict:
    """FLA times (µs) and its relative differences vs qnext (and vs the reference at 4K)."""
    x, kw = _case(hv, lengths)
    ours = gdn_prefill(**x, **{**kw, "ssm_states": kw["ssm_states"].clone()},
                       fast_dots=FAST_DOTS)
    want = _reference(x, kw) if sum(lengths) <= 4096 else None
    res = {"us": [], "diff": [], "ref": []}
    for fused in (False, True):
        fla = _fla(x, kw, fused)
        out = fla()[0][0]
        res["diff"].append(rel_diff(ours, out))
        if want is not None and not fused:
            res["ref"] += [rel_diff(out, want), rel_diff(ours, want)]
        res["us"].append(_time(fla))
    return res


def _floor_us(hv: int, lengths: list[int]) -> float:
    """max(HBM bytes / peak, recurrence FLOPs / bf16 peak): q, k, v, o once, states in + out."""
    T, B, hk = sum(lengths), len(lengths), hv // 2
    nbytes = 2 * T * (2 * hk + 2 * hv) * D + 2 * T * hv * 2 + 2 * B * hv * D * D * 4
    flops = 6 * T * hv * D * D
    return max(nbytes / HBM_BYTES_S, flops / BF16_FLOPS_S) * 1e6


def _table() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}, qnext fast_dots={FAST_DOTS}")
    ours = {}
    for hv, lengths in CASES:
        x, kw = _case(hv, lengths)
        key = hv, len(lengths), sum(lengths)
        ours[key] = {name: _time(_ours(x, kw, **knobs)) for name, knobs in VARIANTS.items()}
        print(f"qnext {len(lengths)} x {lengths[0]} tokens, Hv = {hv}: "
              + ", ".join(f"{name} {us:.0f} µs" for name, us in ours[key].items()), flush=True)
        del x, kw
    torch.cuda.empty_cache()
    fla = {} if "--no-anchor" in sys.argv else _anchors()
    names = " | ".join(f"qnext {name} µs" for name in VARIANTS)
    print(f"| tokens | seqs | Hv | floor µs | {names} | FLA µs (gates precomputed) | FLA µs "
          "(fused gates) | best FLA / best qnext | rel. diff vs FLA | vs ref (FLA, qnext) |")
    print("|---" * (10 + len(VARIANTS)) + "|")
    for hv, lengths in CASES:
        T, B = sum(lengths), len(lengths)
        times = ours[hv, B, T]
        res = fla.get((hv, B, T))
        cells = ["failed"] * 2 + ["—"] * 3
        if res:
            ref = f"{res['ref'][0]:.1e}, {res['ref'][1]:.1e}" if res["ref"] else "—"
            cells = [f"{res['us'][0]:.0f}", f"{res['us'][1]:.0f}",
                     f"{min(res['us']) / min(times.values()):.2f}", f"{max(res['diff']):.1e}",
                     ref]
        print(f"| {T} | {B} | {hv} | {_floor_us(hv, lengths):.0f} | "
              + " | ".join(f"{us:.0f}" for us in times.values()) + " | "
              + " | ".join(cells) + " |")
    print("qnext kernels at 16K tokens, 1 and 4 sequences, Hv = 32:")
    for lengths in ([16384], [4096] * 4):
        for name, knobs in VARIANTS.items():
            print(f"  {name}:")
            _per_kernel(*_case(32, lengths), **knobs)


def _anchors() -> dict:
    """FLA's rows, each Hv in a subprocess of its own."""
    fla = {}
    for hv in (32, 8):
        cmd = [sys.executable, __file__, "--anchor", str(hv)] + sys.argv[1:]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=ANCHOR_TIMEOUT_S)
            out, err, rc = done.stdout, done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:  # FLA autotunes on its first calls
            out, err, rc = exc.stdout or "", "timed out", 1
            out = out.decode() if isinstance(out, bytes) else out
        for line in out.splitlines():
            key, res = json.loads(line)
            fla[tuple(key)] = res
            print(f"FLA {key}: {res}", flush=True)
        if rc:
            print(f"anchor at Hv = {hv} failed: {err.strip().splitlines()[-1:]}", flush=True)
    return fla


def _anchor_rows(hv: int) -> None:
    for case_hv, lengths in CASES:
        if case_hv == hv:
            res = _anchor(hv, lengths)
            print(json.dumps([[hv, len(lengths), sum(lengths)], res]), flush=True)


def _sweep() -> None:
    """Total time per launcher knob setting, and the per-kernel split at the default."""
    print("| tokens | seqs | block_v | num_warps (prep, scan) | µs |")
    print("|---|---|---|---|---|")
    for lengths in ([16384], [4096] * 4):
        x, kw = _case(32, lengths)
        for block_v in (64, 128):
            for warps in ((4, 4), (8, 4), (4, 8), (8, 8)):
                try:
                    us = f"{_time(_ours(x, kw, block_v=block_v, num_warps=warps)):.0f}"
                except Exception as exc:  # noqa: BLE001 - out of resources etc.: report
                    us = type(exc).__name__
                print(f"| {sum(lengths)} | {len(lengths)} | {block_v} | {warps} | {us} |")
        for name in VARIANTS:
            _per_kernel(x, kw, pipeline=name)


def _per_kernel(x, kw, **knobs) -> None:
    """Mean GPU time per kernel of one qnext call, from the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            _ours(x, kw, **knobs)()
        torch.cuda.synchronize()
    for ev in prof.key_averages():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            print(f"  {ev.key[:40]}: {ev.device_time_total / ev.count:.0f} µs")


if __name__ == "__main__":
    with torch.inference_mode():
        if sys.argv[1:2] == ["--anchor"]:
            _anchor_rows(int(sys.argv[2]))
        elif sys.argv[1:2] == ["--sweep"]:
            _sweep()
        else:
            _table()
