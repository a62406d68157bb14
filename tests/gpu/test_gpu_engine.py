"""The engine on CUDA: batched greedy generation (normal and overlap loop, where the overlap loop
really runs ahead of the device) equals transformers' generate per request, and seeded sampling
on the device does not depend on the batch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from qnext.worker.engine import Engine
from qnext.worker.sched.request import SamplingParams
from tests.engine.helpers import assert_pools_at_baseline, engine_config, random_prompts
from tests.models.harness import hf_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _cuda_engine(path, **kwargs) -> Engine:
    cfg = engine_config(path, **kwargs)
    return Engine(replace(cfg, load=replace(cfg.load, device="cuda")))


@pytest.mark.parametrize("overlap", [False, True], ids=["normal", "overlap"])
def test_engine_greedy_on_gpu(tiny_checkpoint, overlap):
    path = tiny_checkpoint("tiny")
    prompts = random_prompts(20, 2, 60, 384, seed=21)
    hf = hf_model(path, device="cuda")
    expected = []
    for prompt in prompts:
        ids = torch.tensor([prompt], device="cuda")
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                          min_new_tokens=10, do_sample=False)
        expected.append(out[0, len(prompt):].tolist())
    engine = _cuda_engine(path, overlap=overlap, max_total_tokens=300, chunk=8)
    outputs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=10,
                                                      ignore_eos=True))
    assert [o.output_ids for o in outputs] == expected
    assert engine.stats()["num_preemptions"] > 0
    assert_pools_at_baseline(engine)


def test_seeded_sampling_on_gpu_independent_of_batch(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=77,
                            ignore_eos=True, frequency_penalty=0.5)
    alone = _cuda_engine(path, overlap=True).generate([[3, 1, 4, 1, 5]], params)[0]
    others = random_prompts(9, 1, 40, 384, seed=5)
    engine = _cuda_engine(path, overlap=True)
    mixed = engine.generate(others[:4] + [[3, 1, 4, 1, 5]] + others[4:],
                            [SamplingParams(temperature=0.7, max_new_tokens=15)] * 4 + [params]
                            + [SamplingParams(temperature=0, max_new_tokens=5)] * 5)
    assert mixed[4].output_ids == alone.output_ids
    assert_pools_at_baseline(engine)


@pytest.mark.parametrize("radix,page_size,overlap", [("no_buffer", 1, False),
                                                     ("no_buffer", 1, True),
                                                     ("extra_buffer", 16, True)])
def test_prefix_cache_on_gpu(tiny_checkpoint, radix, page_size, overlap):
    """Multi-turn chat on CUDA: later turns hit the cache (copy-on-write, snapshots written by
    the forward, decode snapshots every 64 tokens) and give the tokens of no cache."""
    path = tiny_checkpoint("tiny")
    first = random_prompts(1, 150, 151, 384, seed=6)[0]
    params = SamplingParams(temperature=0, max_new_tokens=40, ignore_eos=True)
    turns = {}
    for strategy in (radix, "off"):
        engine = _cuda_engine(path, radix=strategy, page_size=page_size, overlap=overlap,
                              chunk=64, max_prefill_tokens=256, track_interval=64)
        prompt, turns[strategy] = first, []
        for _ in range(3):
            out = engine.generate([prompt], params)[0]
            turns[strategy].append((out.output_ids, out.cached_tokens))
            prompt = [*prompt, *out.output_ids, 7, 8, 9]
        assert_pools_at_baseline(engine)
    assert [ids for ids, _ in turns[radix]] == [ids for ids, _ in turns["off"]]
    assert [hit > 0 for _, hit in turns[radix]] == [False, True, True]


def test_overlap_loop_never_waits_for_the_device_outside_resolve(tiny_checkpoint):
    """No operation of a generation in the overlap loop synchronises host and device (torch's
    sync debug mode raises on one): admissions, cache hits, penalties, seeded sampling and
    graph replays all queue work; only `Download` waits, for its own copy. Such a sync would
    make the host wait for the step just launched and idle the device while it plans."""
    path = tiny_checkpoint("tiny")
    engine = _cuda_engine(path, overlap=True, radix="extra_buffer", page_size=16)
    shared = random_prompts(1, 40, 41, 384, seed=8)[0]
    prompts = [shared + p for p in random_prompts(6, 1, 30, 384, seed=9)]
    params = [SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0.8, top_k=20, seed=3, max_new_tokens=12,
                             repetition_penalty=1.2, ignore_eos=True)] * 3
    want = [o.output_ids for o in engine.generate(prompts, params)]  # compiles, caches
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = [o.output_ids for o in engine.generate(prompts, params)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert got == want
    assert_pools_at_baseline(engine)
