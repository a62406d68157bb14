"""On CUDA, the start-up warm-up (runtime/warmup.py) compiles every Triton shape class that a
loaded server meets: a serving-like run afterwards (prompts of 1..300 tokens arriving together,
chunked prefill mixed with decodes, a cache hit on a shared prefix, the overlap loop) compiles
nothing. A failure names the kernels and their specialisations: the classes to add."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from qnext.kernels.compile_log import CompileWatch
from qnext.worker.engine import Engine
from qnext.worker.sched.request import SamplingParams
from tests.engine.helpers import engine_config, random_prompts

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_serving_after_the_warm_up_compiles_nothing(tiny_checkpoint, dtype):
    path = tiny_checkpoint("tiny")
    cfg = engine_config(path, overlap=True, radix="no_buffer", chunk=64,
                        max_prefill_tokens=256, max_total_tokens=8192)
    engine = Engine(replace(cfg, load=replace(cfg.load, device="cuda", dtype=dtype)))
    shared = random_prompts(1, 90, 91, 384, seed=40)[0]
    prompts = random_prompts(24, 1, 300, 384, seed=41) + [shared + [5, 6], shared + [7]]
    compiled: list[str] = []
    with CompileWatch(compiled.append):
        engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=12,
                                                ignore_eos=True))
        engine.generate([shared + [9, 9, 9]], SamplingParams(temperature=0, max_new_tokens=4))
    assert engine.stats()["prefix_cache"]["cached_tokens"] > 0
    assert not compiled, "compiled after the warm-up:\n" + "\n".join(compiled)
