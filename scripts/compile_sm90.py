"""Dev tool, not a test: compile for Hopper (sm_90), on a machine without a GPU, every Triton
kernel that launcher calls make, without running them.

Triton's CPU interpreter (TRITON_INTERPRET=1, the path of the kernel tests on CPU) accepts code
that the GPU compiler rejects: on 2026-11-28 a constexpr inside a tuple passed every
interpreter test and failed to compile on the H200, costing a device call. This runs the real
Triton front end, optimiser and ptxas (shipped in the triton wheel) for sm_90 and prints each
compiled kernel's shared memory, warps, stages, registers and stack (spills), so such errors
surface before device time is spent. How: a stand-in Triton driver that only names the target,
`JITFunction.run` told to compile and skip the launch, and kernels/launch.py's device check
told to accept CPU tensors (the launchers' outputs are left unwritten).

    python scripts/compile_sm90.py [gdn_prefill conv_prefill gdn_decode attention gemv moe]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction


class CompileOnlyDriver:
    """What a JITFunction asks of the active driver before it launches."""

    def __init__(self, arch: int = 90):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def _compile_only(seen: dict):
    run = JITFunction.run

    def compile_run(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        meta = kernel.metadata
        key = (self.fn.__name__, meta.hash)
        if key not in seen:
            seen[key] = True
            print(f"  {self.fn.__name__}: shared {meta.shared} B, warps {meta.num_warps}, "
                  f"stages {meta.num_stages}, {_resources(kernel.asm['cubin'])}", flush=True)
        return kernel
    JITFunction.run = compile_run


def _resources(cubin: bytes) -> str:
    """Registers and spill stores per thread, from cuobjdump (shipped with triton)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], text=True,
                             capture_output=True).stdout
    found = re.search(r"REG:(\d+).*?STACK:(\d+)", out)
    return f"registers {found[1]}, stack {found[2]} B" if found else "registers ?"


def gdn_prefill_cases():
    """The GDN prefill pipelines at Qwen3-Next shapes (bf16 and fp32 inputs, one and many
    sequences, with snapshots)."""
    from qnext.kernels.gdn_prefill import PIPELINES, gdn_prefill

    for dtype in (torch.bfloat16, torch.float32):
        for hv, lengths in ((32, [4096]), (32, [1000] * 40), (8, [300, 200])):
            T, B, hk = sum(lengths), len(lengths), hv // 2
            x = dict(q=torch.randn(T, hk, 128, dtype=dtype), k=torch.randn(T, hk, 128, dtype=dtype),
                     v=torch.randn(T, hv, 128, dtype=dtype), a=torch.randn(T, hv),
                     b=torch.randn(T, hv), A_log=torch.zeros(hv), dt_bias=torch.zeros(hv))
            kw = dict(cu_seqlens=torch.tensor([0] + lengths).cumsum(0).int(),
                      ssm_states=torch.zeros(2 * B + 1, hv, 128, 128),
                      state_indices=torch.arange(B) + 1,
                      has_initial_state=torch.ones(B, dtype=torch.bool),
                      snapshot_slots=torch.arange(B) + B + 1,
                      snapshot_offsets=torch.full((B,), 128))
            for pipeline in PIPELINES:
                print(f"gdn_prefill {dtype} Hv {hv} {B} sequence(s), {pipeline}:", flush=True)
                gdn_prefill(**x, **kw, pipeline=pipeline, block_v=None)


def conv_prefill_cases():
    """The varlen conv (+ SiLU) at the model's conv width, one long and many short
    sequences, with snapshots."""
    from qnext.kernels.conv_prefill import conv_prefill

    for lengths in ([8192], [128] * 64):
        T, B, C = sum(lengths), len(lengths), 8192
        print(f"conv_prefill {B} sequence(s):", flush=True)
        conv_prefill(torch.randn(T, C, dtype=torch.bfloat16), torch.randn(C, 4),
                     cu_seqlens=torch.tensor([0] + lengths).cumsum(0).int(),
                     conv_states=torch.zeros(2 * B + 1, C, 3), state_indices=torch.arange(B) + 1,
                     has_initial_state=torch.ones(B, dtype=torch.bool),
                     snapshot_slots=torch.arange(B) + B + 1, snapshot_offsets=torch.full((B,), 64))


def gdn_decode_cases():
    """One decode step, plain and with the fused output norm, with snapshots."""
    from qnext.kernels.gdn_decode import gdn_decode

    B, hv = 64, 32
    x = dict(q=torch.randn(B, hv // 2, 128, dtype=torch.bfloat16),
             k=torch.randn(B, hv // 2, 128, dtype=torch.bfloat16),
             v=torch.randn(B, hv, 128, dtype=torch.bfloat16), a=torch.randn(B, hv),
             b=torch.randn(B, hv), A_log=torch.zeros(hv), dt_bias=torch.zeros(hv))
    kw = dict(ssm_states=torch.zeros(2 * B + 1, hv, 128, 128), state_indices=torch.arange(B) + 1,
              snapshot_slots=torch.arange(B) + B + 1)
    norm = (torch.randn(B, hv, 128, dtype=torch.bfloat16), torch.ones(128), 1e-6)
    for fused_norm in (None, norm):
        print(f"gdn_decode, norm fused: {fused_norm is not None}:", flush=True)
        gdn_decode(**x, **kw, norm=fused_norm)


def attention_cases():
    """Paged gated attention at the model's TP1 heads (16 query, 2 KV, dim 256): a prefill
    over a cached prefix (whole, and in key splits), and decode."""
    from qnext.kernels.attention import paged_attention

    page, pages = 16, 64
    for T, is_decode, splits in ((512, False, 1), (512, False, 3), (8, True, None)):
        B = 1 if not is_decode else T
        q = torch.randn(T, 16, 256, dtype=torch.bfloat16)
        cache = torch.randn(pages * page, 2, 256, dtype=torch.bfloat16)
        print(f"paged_attention, decode: {is_decode}, splits {splits}:", flush=True)
        paged_attention(q, cache, cache.clone(), cu_seqlens=torch.arange(B + 1) * (T // B),
                        seq_lens=torch.full((B,), 600), page_table=torch.arange(pages)[None]
                        .expand(B, pages).contiguous(), page_size=page, scale=0.0625,
                        is_decode=is_decode, gate=torch.randn_like(q), num_splits=splits)


def gemv_cases():
    """The one-row decode GEMV at TP4 shapes (hidden 2048): plain, with the GDN conv on the
    input projection's first columns, with the GDN output norm before the output projection."""
    from qnext.kernels.gemv import gemv

    dt = torch.bfloat16
    x = torch.randn(1, 2048, dtype=dt)
    print("gemv, plain / conv / norm:", flush=True)
    gemv(x, torch.randn(3088, 2048, dtype=dt))
    gemv(x, torch.randn(3088, 2048, dtype=dt), conv=(
        torch.randn(2048, 4, dtype=dt), torch.zeros(9, 2048, 3, dtype=dt),
        torch.tensor([3]), torch.tensor([5])))
    h = torch.randn(1, 1024, dtype=dt)
    gemv(h, torch.randn(2048, 1024, dtype=dt), norm=(h.clone(), torch.ones(128, dtype=dt), 1e-6))


def moe_cases():
    """The decode MoE at TP4 and TP1 shapes (512 experts + the shared one, top-10): the router
    kernel and the two per-assignment GEMVs, with and without programmatic dependent launch."""
    from qnext.kernels.moe_gemv import expert_rows_gemv
    from qnext.kernels.moe_router import route_hidden

    dt, E, H = torch.bfloat16, 512, 2048
    x = torch.randn(1, H, dtype=dt)
    for I in (128, 512):
        w13, w2 = torch.randn(E + 1, 2 * I, H, dtype=dt), torch.randn(E + 1, H, I, dtype=dt)
        for use_pdl in (False, True):
            print(f"moe, I {I}, pdl {use_pdl}:", flush=True)
            route_hidden(x, torch.randn(528, H, dtype=dt), E + 1, 10, True, True,
                         use_pdl=use_pdl)
            expert_rows_gemv(x, w13, w2, torch.rand(1, 11), torch.randint(0, E, (1, 11)),
                             torch.empty(11, H, dtype=dt), use_pdl=use_pdl)


CASES = {"gdn_prefill": gdn_prefill_cases, "conv_prefill": conv_prefill_cases,
         "gdn_decode": gdn_decode_cases, "attention": attention_cases, "gemv": gemv_cases,
         "moe": moe_cases}


def main(names: list[str]) -> None:
    driver.set_active(CompileOnlyDriver())
    _compile_only({})
    from qnext.kernels import launch

    launch.interpreting = lambda: True  # check_device accepts CPU tensors; the launchers'
    # own `interpreting` stays False, so they pick the GPU code paths
    for name in names or list(CASES):
        CASES[name]()


if __name__ == "__main__":
    with torch.inference_mode():
        main(sys.argv[1:])
