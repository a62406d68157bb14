"""Decode steps replayed from CUDA graphs give the tokens of eager decode: batches of every
size up to the largest captured (padding rows), normal and overlap loop (future tokens feed the
graph's inputs on the device), extra_buffer decode snapshots taken inside the graph."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from qnext.worker.engine import Engine
from qnext.worker.sched.request import SamplingParams
from tests.engine.helpers import assert_pools_at_baseline, engine_config, random_prompts

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _engine(path, graphs: bool, **kwargs) -> Engine:
    cfg = engine_config(path, **kwargs)
    return Engine(replace(cfg, load=replace(cfg.load, device="cuda"),
                          sched=replace(cfg.sched, disable_cuda_graph=not graphs,
                                        cuda_graph_max_bs=16)))


@pytest.mark.parametrize("overlap", [False, True], ids=["normal", "overlap"])
@pytest.mark.parametrize("radix,page_size", [("off", 1), ("extra_buffer", 16)])
def test_graph_decode_equals_eager(tiny_checkpoint, overlap, radix, page_size):
    path = tiny_checkpoint("tiny")
    prompts = random_prompts(21, 3, 90, 384, seed=8)  # > 16: the largest batches run eagerly
    params = [SamplingParams(temperature=0, max_new_tokens=8 + 5 * (i % 7), ignore_eos=True)
              for i in range(len(prompts))]
    outputs = {}
    for graphs in (False, True):
        engine = _engine(path, graphs, overlap=overlap, radix=radix, page_size=page_size,
                         chunk=64, max_prefill_tokens=256, track_interval=64)
        assert (engine.runner.graphs is not None) == graphs
        outputs[graphs] = [o.output_ids for o in engine.generate(prompts, params)]
        assert_pools_at_baseline(engine)
    assert outputs[True] == outputs[False]
