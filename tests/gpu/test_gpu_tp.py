"""TP=2 over NCCL (two processes, one GPU each) computes the same logits as TP=1 on one GPU.
Needs two GPUs (nvidia-h100-x2); same bounds as the CPU/gloo test. In float32 the small
all-reduces take the symmetric-memory path (worker/layers/symm_allreduce.py; its own test is
test_gpu_allreduce.py), float64 ones NCCL."""

from __future__ import annotations

import pytest
import torch

from tests.models.test_tensor_parallel import tp2_vs_tp1

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]


@pytest.mark.parametrize("preset,page_size", [("tiny-tp", 1), ("tiny-b", 4)])
def test_nccl_tp2_equals_tp1(tiny_checkpoint, tmp_path, preset, page_size):
    path = tiny_checkpoint(preset)
    errors64 = tp2_vs_tp1(path, tmp_path, page_size, "float64", device="cuda")
    errors32 = tp2_vs_tp1(path, tmp_path, page_size, "float32", device="cuda")
    print(f"{preset}: NCCL TP=2 vs TP=1 float64 {max(errors64):.2e}, float32 per step "
          + " ".join(f"{e:.2e}" for e in errors32))
    assert max(errors64) < 1e-10, errors64
    for step, err in enumerate(errors32):
        assert err < (1e-4 if step < 2 else 1e-5), f"step {step}: {err:.2e}"


@pytest.mark.skipif(torch.cuda.device_count() < 4, reason="needs four CUDA GPUs")
def test_nccl_tp4_equals_tp1(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("tiny-tp")
    errors64 = tp2_vs_tp1(path, tmp_path, 1, "float64", device="cuda", size=4)
    errors32 = tp2_vs_tp1(path, tmp_path, 1, "float32", device="cuda", size=4)
    print(f"NCCL TP=4 vs TP=1 float64 {max(errors64):.2e}, float32 {max(errors32):.2e}")
    assert max(errors64) < 1e-10, errors64
    for step, err in enumerate(errors32):
        assert err < (1e-4 if step < 2 else 1e-5), f"step {step}: {err:.2e}"


@pytest.mark.parametrize("radix,overlap", [("no_buffer", False), ("no_buffer", True),
                                           ("extra_buffer", True)])
def test_nccl_tp2_engine_equals_tp1(tiny_checkpoint, radix, overlap):
    """The engine's TP executor on two GPUs (NCCL collectives, plans through the command
    ring), float64: greedy tokens equal one GPU's, through preemption, cache hits and a
    runtime re-split."""
    from tests.engine.test_tp_engine import tp2_vs_tp1 as engine_tp2_vs_tp1

    got, want = engine_tp2_vs_tp1(tiny_checkpoint("tiny-tp"), overlap, device="cuda",
                                  radix=radix)
    assert got == want


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nccl_tp2_cuda_graphs_equal_eager(tiny_checkpoint, dtype):
    """TP=2 decode captured in CUDA graphs (symmetric-memory all-reduces inside them) gives the
    greedy tokens of TP=2 eager, and the graphs really were captured on rank 0."""
    from dataclasses import replace

    from qnext.worker.config import ParallelConfig
    from qnext.worker.engine import Engine
    from qnext.worker.layers.parallel import reset_tp_info
    from qnext.worker.sched.request import SamplingParams
    from tests.engine.helpers import engine_config, random_prompts

    cfg = engine_config(tiny_checkpoint("tiny-tp"), max_total_tokens=2000)
    prompts = random_prompts(5, 3, 60, 384, seed=11)
    params = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    outputs = {}
    # graphs first: only a process's first TP group gets symmetric memory (symm_allreduce.py),
    # so the eager engine's all-reduces go through NCCL (the same sums of two ranks)
    for graphs in (True, False):
        reset_tp_info()
        engine = Engine(replace(cfg, load=replace(cfg.load, dtype=dtype, device="cuda"),
                                parallel=ParallelConfig(tp_size=2),
                                sched=replace(cfg.sched, disable_cuda_graph=not graphs,
                                              cuda_graph_max_bs=8)))
        try:
            assert (engine.runner.graphs is not None) == graphs
            outputs[graphs] = [o.output_ids for o in engine.generate(prompts, params)]
        finally:
            engine.close()
    assert outputs[True] == outputs[False]


def test_nccl_tp2_speculation_in_the_overlap_loop(tiny_checkpoint):
    """NEXTN chains at TP=2 over NCCL in the overlap loop, verify and draft replaying CUDA
    graphs on every rank (each feeds its own verify's results forward): the greedy tokens of
    plain TP=2 decoding, float32."""
    from dataclasses import replace

    from qnext.worker.config import ParallelConfig
    from qnext.worker.engine import Engine
    from qnext.worker.engine.loop import OverlapLoop
    from qnext.worker.layers.parallel import reset_tp_info
    from qnext.worker.sched.request import SamplingParams
    from qnext.worker.spec_config import SpecConfig
    from tests.engine.helpers import engine_config, random_prompts

    cfg = engine_config(tiny_checkpoint("tiny-tp"), max_total_tokens=2000, overlap=True)
    cfg = replace(cfg, load=replace(cfg.load, dtype="float32", device="cuda"),
                  parallel=ParallelConfig(tp_size=2),
                  sched=replace(cfg.sched, cuda_graph_max_bs=8))
    prompts = random_prompts(6, 3, 60, 384, seed=13)
    params = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)
    outputs = []
    for spec in (SpecConfig(), SpecConfig("NEXTN", num_steps=2)):
        reset_tp_info()
        engine = Engine(replace(cfg, spec=spec))
        try:
            assert isinstance(engine.loop, OverlapLoop)
            if spec.enabled:
                assert engine.executor.verify_graphs is not None
            outputs.append([o.output_ids for o in engine.generate(prompts, params)])
            if spec.enabled:
                assert engine.stats()["spec"]["verify_seqs"] > 0
        finally:
            engine.close()
    assert outputs[0] == outputs[1]
