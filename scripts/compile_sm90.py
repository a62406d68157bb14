"""Dev tool, not a test: compile for Hopper (sm_90), on a machine without a GPU, every Triton
kernel that launcher calls make, without running them.

Triton's CPU interpreter (TRITON_INTERPRET=1, the path of the kernel tests on CPU) accepts code
that the GPU compiler rejects: on 2026-11-28 a constexpr inside a tuple passed every interpreter
test and failed to compile on the H200, costing a device call. This runs the real Triton
front end, optimiser and ptxas (shipped in the triton wheel) for sm_90 and prints each
compiled kernel's shared memory, warps and stages, so such errors surface before device
time is spent. How: a stand-in Triton driver that only names the target, `JITFunction.run`
told to compile and skip the launch, and kernels/launch.py's device check told to accept CPU
tensors (the launchers' outputs are left unwritten).

    python scripts/compile_sm90.py [gdn_prefill ...]   # default: every case below
"""

from __future__ import annotations

import sys

import torch
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
        key = (self.fn.__name__, meta.shared, meta.num_warps, meta.num_stages)
        if key not in seen:
            seen[key] = True
            print(f"  {self.fn.__name__}: shared {meta.shared} B, warps {meta.num_warps}, "
                  f"stages {meta.num_stages}", flush=True)
        return kernel
    JITFunction.run = compile_run


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


CASES = {"gdn_prefill": gdn_prefill_cases}


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
