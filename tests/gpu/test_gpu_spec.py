"""Speculative decoding on the GPU (the trained tiny checkpoint, float32): greedy NEXTN output
equals plain decoding's with the Triton verify kernels, the verify of draft chains and the
drafting after it replay CUDA graphs (padded batch sizes, the verify buffers as graph inputs)
and give the tokens of the eager path, in the normal and the overlap loop (chains), trees
run eagerly, and every page and slot comes back."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from qnext.worker.engine import Engine
from qnext.worker.engine.loop import OverlapLoop
from qnext.worker.sched.request import SamplingParams
from qnext.worker.spec_config import SpecConfig
from tests.engine.helpers import assert_pools_at_baseline, engine_config
from tests.engine.test_spec_trained import CHECKPOINT, _prompts

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

#: 12 sequences of staggered lengths: verify batches above the largest graph (4, eager) and
#: at or below it (padded replays)
PARAMS = [SamplingParams(temperature=0.0, max_new_tokens=12 + 6 * i, ignore_eos=True)
          for i in range(12)]


def _engine(graphs: bool, spec: SpecConfig, overlap: bool = False) -> Engine:
    cfg = engine_config(CHECKPOINT, overlap=overlap)
    return Engine(replace(cfg, load=replace(cfg.load, device="cuda"), spec=spec,
                          sched=replace(cfg.sched, disable_cuda_graph=not graphs,
                                        cuda_graph_max_bs=4)))


@pytest.mark.parametrize("steps,topk,draft_tokens", [(1, 1, None), (3, 1, None), (2, 2, 4)])
def test_spec_on_gpu_equals_plain_decoding(steps, topk, draft_tokens):
    prompts = _prompts() * 3
    plain = _engine(True, SpecConfig())
    want = [o.output_ids for o in plain.generate(prompts, PARAMS)]
    spec = SpecConfig("NEXTN", num_steps=steps, eagle_topk=topk, num_draft_tokens=draft_tokens)
    outputs = {}
    for graphs, overlap in ((False, False), (True, False), (True, True)):
        engine = _engine(graphs, spec, overlap)
        executor = engine.executor
        assert (executor.verify_graphs is not None) == (graphs and topk == 1)
        assert (executor.draft_graphs is not None) == (graphs and topk == 1)
        assert isinstance(engine.loop, OverlapLoop) == (overlap and topk == 1)
        outputs[graphs, overlap] = [o.output_ids for o in engine.generate(prompts, PARAMS)]
        assert_pools_at_baseline(engine)
        assert engine.stats()["spec"]["accept_length"] > 1.3
        if executor.verify_graphs is not None:
            assert 0 < executor.verify_graphs.runs < executor.counters["verify_steps"]
    assert all(got == want for got in outputs.values())


def test_sampled_spec_in_the_overlap_loop_on_gpu_equals_plain_sampling():
    """Seeded sampling: the overlap loop's device-side counters draw what plain decoding
    draws, with graphs."""
    params = [replace(p, temperature=0.7, top_k=20, seed=i) for i, p in enumerate(PARAMS)]
    prompts = _prompts() * 3
    want = [o.output_ids for o in _engine(True, SpecConfig()).generate(prompts, params)]
    engine = _engine(True, SpecConfig("NEXTN", num_steps=3), overlap=True)
    assert isinstance(engine.loop, OverlapLoop) and engine.executor.verify_graphs is not None
    assert [o.output_ids for o in engine.generate(prompts, params)] == want
    assert_pools_at_baseline(engine)
