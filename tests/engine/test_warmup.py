"""The start-up warm-up (`runtime/warmup.py`): its forwards touch only slot 0 and page 0, so an
engine that warmed up gives the tokens of one that did not, with every pool entry free and no
request counted — at TP 1 and TP 2 (the followers run the same forwards)."""

from __future__ import annotations

from dataclasses import replace

from qnext.cli import options as o
from qnext.worker.config import ParallelConfig
from qnext.worker.engine import Engine
from qnext.worker.layers.parallel import reset_tp_info
from qnext.worker.runtime.warmup import SHAPES, shapes_for
from qnext.worker.sched.request import SamplingParams
from tests.engine.helpers import assert_pools_at_baseline, engine_config, random_prompts

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8, ignore_eos=True)


def _tokens(engine: Engine, prompts) -> list[list[int]]:
    return [out.output_ids for out in engine.generate(prompts, GREEDY)]


def test_warm_up_leaves_no_trace(tiny_checkpoint):
    cfg = engine_config(tiny_checkpoint("tiny"), overlap=True, radix="extra_buffer")
    prompts = random_prompts(4, 5, 30, 384, seed=11)
    want = _tokens(Engine(cfg), prompts)
    engine = Engine(cfg)
    assert engine.executor.warm_up() == len(SHAPES)  # no limit: the 2048-token prompt too
    assert_pools_at_baseline(engine)
    assert engine.stats()["num_requests"] == 0
    # within a 16-token budget: the three decode batches, then 8 prompts of 2 tokens
    assert engine.executor.warm_up(16) == 4 == len(shapes_for(16))
    assert _tokens(engine, prompts) == want


def test_warm_up_shapes_cross_the_classes_a_loaded_server_meets():
    """Within the budget; token and sequence counts of each class (1, a multiple of 16,
    other); cached prefixes; decodes mixed into prefill; the whole budget last."""
    shapes = shapes_for(256)
    assert all(sum(new for new, _ in shape) <= 256 for shape in shapes)
    assert shapes[-1] == ((32, 0),) * 8 and shapes_for(None) == list(SHAPES)

    def cls(n):
        return 1 if n == 1 else 16 if n % 16 == 0 else 0

    seen = {(cls(sum(new for new, _ in s)), cls(len(s))) for s in shapes}
    assert {(0, 1), (0, 0), (16, 0), (16, 16), (0, 16), (16, 1)} <= seen, seen
    assert any(prefix and new > 1 for s in shapes for new, prefix in s)  # a later chunk
    assert any({new > 1 for new, _ in s} == {True, False} for s in shapes)  # mixed


def test_tp2_followers_warm_up_too(tiny_checkpoint):
    cfg = engine_config(tiny_checkpoint("tiny-tp"), radix="off")
    cfg = replace(cfg, load=replace(cfg.load, dtype="float64"))
    prompts = random_prompts(3, 5, 20, 384, seed=12)
    want = _tokens(Engine(cfg), prompts)
    reset_tp_info()  # this process was rank 0 of 1; now it leads a group of 2
    engine = Engine(replace(cfg, parallel=ParallelConfig(tp_size=2)))
    try:
        # a collective per layer on both ranks, every forward
        assert engine.executor.warm_up(64) == len(shapes_for(64))
        assert _tokens(engine, prompts) == want
    finally:
        engine.close()


def test_skip_server_warmup_flag_reaches_the_config(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    flags = {name: default for name, _, default in o.ENGINE_FLAGS}
    assert not o.build_config(path, **flags).sched.skip_server_warmup
    assert o.build_config(path, **{**flags, "skip_server_warmup": True}).sched.skip_server_warmup
