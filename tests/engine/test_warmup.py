"""The start-up warm-up (`runtime/warmup.py`): its forwards touch only slot 0 and page 0, so an
engine that warmed up gives the tokens of one that did not, with every pool entry free and no
request counted — at TP 1 and TP 2 (the followers run the same forwards)."""

from __future__ import annotations

from dataclasses import replace

from qnext.cli import options as o
from qnext.worker.config import ParallelConfig
from qnext.worker.engine import Engine
from qnext.worker.layers.parallel import reset_tp_info
from qnext.worker.runtime.warmup import SHAPES
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
    assert engine.executor.warm_up(16) == 1  # within the chunked-prefill size: the decode batch
    assert _tokens(engine, prompts) == want


def test_tp2_followers_warm_up_too(tiny_checkpoint):
    cfg = engine_config(tiny_checkpoint("tiny-tp"), radix="off")
    cfg = replace(cfg, load=replace(cfg.load, dtype="float64"))
    prompts = random_prompts(3, 5, 20, 384, seed=12)
    want = _tokens(Engine(cfg), prompts)
    reset_tp_info()  # this process was rank 0 of 1; now it leads a group of 2
    engine = Engine(replace(cfg, parallel=ParallelConfig(tp_size=2)))
    try:
        assert engine.executor.warm_up(64) == 3  # a collective per layer on both ranks
        assert _tokens(engine, prompts) == want
    finally:
        engine.close()


def test_skip_server_warmup_flag_reaches_the_config(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    flags = {name: default for name, _, default in o.ENGINE_FLAGS}
    assert not o.build_config(path, **flags).sched.skip_server_warmup
    assert o.build_config(path, **{**flags, "skip_server_warmup": True}).sched.skip_server_warmup
