"""The engine at TP=2 on CPU: two real processes (rank 0 drives, the follower runs the plans it
sends through the command ring) give the greedy tokens of TP=1 — no_buffer in both loops and
extra_buffer in the overlap loop, through preemption, prefix-cache hits and a runtime re-split
of memory (which re-plans and re-allocates on every rank)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qnext.worker.config import ParallelConfig
from qnext.worker.engine import Engine
from qnext.worker.layers.parallel import reset_tp_info
from qnext.worker.sched.request import SamplingParams
from tests.engine.helpers import (
    assert_pools_at_baseline,
    engine_config,
    random_prompts,
    run_with_changes,
)

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=10, ignore_eos=True)
RESPLIT = [(5, dict(num_slots=30))]  # a runtime re-split after five steps, on every rank


CASES = [("no_buffer", False), ("no_buffer", True), ("extra_buffer", True)]  # radix, overlap
IDS = ["no_buffer-normal", "no_buffer-overlap", "extra_buffer-overlap"]


def _engine(path, tp: int, overlap: bool, device: str = "cpu",
            radix: str | None = None) -> Engine:
    radix = radix or ("extra_buffer" if overlap else "no_buffer")
    cfg = engine_config(path, overlap=overlap, radix=radix, max_total_tokens=600, chunk=8)
    cfg = replace(cfg, load=replace(cfg.load, dtype="float64", device=device),
                  parallel=ParallelConfig(tp_size=tp))
    return Engine(cfg)


def tp2_vs_tp1(path, overlap: bool, device: str = "cpu",
               radix: str | None = None) -> tuple[dict, dict]:
    """Greedy outputs of TP=1, then of TP=2 (one engine at a time in this process)."""
    shared = random_prompts(1, 30, 31, 384, seed=3)[0]
    prompts = [shared + p for p in random_prompts(6, 1, 40, 384, seed=4)]
    want = run_with_changes(_engine(path, 1, overlap, device, radix), prompts, GREEDY, RESPLIT)
    reset_tp_info()  # this process was rank 0 of 1; now it leads a group of 2
    engine = _engine(path, 2, overlap, device, radix)
    try:
        got = run_with_changes(engine, prompts, GREEDY, RESPLIT)
        assert engine.memory.num_state_slots == 31
        assert engine.stats()["num_preemptions"] > 0, "the pool was meant to force preemption"
        assert_pools_at_baseline(engine)
    finally:
        engine.close()
    return got, want


@pytest.mark.parametrize("radix,overlap", CASES, ids=IDS)
def test_tp2_engine_equals_tp1(tiny_checkpoint, radix, overlap):
    got, want = tp2_vs_tp1(tiny_checkpoint("tiny-tp"), overlap, radix=radix)
    assert got == want
