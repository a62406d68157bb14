"""Runtime control of the engine: strategy switches and state/KV re-splits at a step boundary,
with requests running (normal and overlap loops), change nothing in greedy outputs and lose no
request; a dry run changes nothing; a plan that cannot hold a running request is refused."""

from __future__ import annotations

import pytest

from qnext.worker.engine.loop import NormalLoop, OverlapLoop
from qnext.worker.engine.reconfigure import ReconfigureConflict
from qnext.worker.sched.request import Request, SamplingParams
from tests.engine.helpers import (
    assert_pools_at_baseline,
    make_engine,
    random_prompts,
    run_with_changes,
)

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=30, ignore_eos=True)


@pytest.mark.parametrize("overlap", [False, True], ids=["normal", "overlap"])
def test_changes_under_load_keep_greedy_outputs(tiny_checkpoint, overlap):
    path = tiny_checkpoint("tiny")
    prompts = random_prompts(8, 20, 90, 384, seed=40)
    want = run_with_changes(make_engine(path, overlap=overlap, radix="no_buffer"), prompts,
                            GREEDY)
    engine = make_engine(path, overlap=overlap, radix="no_buffer")
    before = engine.memory
    changes = [(6, dict(ratio=0.5)), (14, dict(strategy="extra_buffer")),
               (22, dict(num_slots=20)), (30, dict(strategy="off"))]
    assert run_with_changes(engine, prompts, GREEDY, changes) == want
    assert engine.strategy == "off" and engine.memory.num_state_slots == 21
    assert engine.memory.state_pool_bytes != before.state_pool_bytes
    assert isinstance(engine.loop, OverlapLoop if overlap else NormalLoop)
    assert engine.stats()["num_finished"] == len(prompts)
    assert_pools_at_baseline(engine)


def test_dry_run_changes_nothing_and_impossible_plans_are_refused(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    engine = make_engine(path, radix="no_buffer", max_total_tokens=None)
    old = engine.memory
    plan, outputs = engine.reconfigure(ratio=0.25, dry_run=True)  # 64 fixed slots -> a ratio
    assert outputs == [] and plan.num_state_slots != old.num_state_slots
    assert engine.memory is old and engine.runner.state_pool.num_slots == old.num_state_slots
    engine.add(Request("long", tuple(random_prompts(1, 300, 301, 384)[0]), GREEDY))
    engine.step()
    with pytest.raises(ReconfigureConflict, match="long"):
        engine.reconfigure(ratio=10**6)  # nearly everything to states: no KV left for it
    assert engine.memory is old and engine.scheduler.running
    with pytest.raises(ValueError, match="mamba-full-memory-ratio"):
        engine.reconfigure(ratio=-1)
    while engine.has_work:
        engine.step()
    assert_pools_at_baseline(engine)
