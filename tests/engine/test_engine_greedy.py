"""Continuous batching is invisible in greedy outputs: 16+ concurrent requests of mixed lengths,
chunked prefill and forced preemption give, token for token, what transformers' `generate`
gives for each request alone — in the normal loop and in the overlap loop."""

from __future__ import annotations

import pytest
import torch

from qnext.worker.sched.request import FinishReason, SamplingParams
from tests.engine.helpers import assert_pools_at_baseline, make_engine, random_prompts
from tests.models.harness import hf_model

NUM_NEW = 12


@pytest.fixture(scope="module")
def case(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    prompts = random_prompts(18, 2, 60, 384, seed=11)
    hf = hf_model(path)
    expected = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NUM_NEW,
                          min_new_tokens=NUM_NEW, do_sample=False)
        expected.append(out[0, len(prompt):].tolist())
    return path, prompts, expected


GREEDY = SamplingParams(temperature=0.0, max_new_tokens=NUM_NEW, ignore_eos=True)


@pytest.mark.parametrize("overlap", [False, True], ids=["normal", "overlap"])
def test_batched_greedy_equals_generate_alone(case, overlap):
    path, prompts, expected = case
    engine = make_engine(path, overlap=overlap, max_total_tokens=4096)
    outputs = engine.generate(prompts, GREEDY)
    assert [o.output_ids for o in outputs] == expected
    assert all(o.finish_reason is FinishReason.LENGTH for o in outputs)
    assert_pools_at_baseline(engine)


@pytest.mark.parametrize("overlap", [False, True], ids=["normal", "overlap"])
def test_preemption_keeps_outputs_identical(case, overlap):
    path, prompts, expected = case
    engine = make_engine(path, overlap=overlap, max_total_tokens=160, chunk=8,
                         max_prefill_tokens=24)
    outputs = engine.generate(prompts, GREEDY)
    assert engine.stats()["num_preemptions"] > 0, "the pool was meant to force preemption"
    assert [o.output_ids for o in outputs] == expected
    assert_pools_at_baseline(engine)


def test_whole_prompt_prefill_with_pages(case):
    """No chunking, page size 4, a running cap: still the same tokens."""
    path, prompts, expected = case
    engine = make_engine(path, chunk=None, max_prefill_tokens=256, page_size=4,
                         max_running_requests=5)
    outputs = engine.generate(prompts, GREEDY)
    assert [o.output_ids for o in outputs] == expected
    assert_pools_at_baseline(engine)


def test_overlap_and_normal_loops_agree_on_sampling(case):
    path, prompts, _ = case
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=10, seed=5,
                            repetition_penalty=1.3, presence_penalty=0.5)
    runs = []
    for overlap in (False, True):
        engine = make_engine(path, overlap=overlap, max_total_tokens=200, chunk=8)
        runs.append([o.output_ids for o in engine.generate(prompts, params)])
        assert_pools_at_baseline(engine)
    assert runs[0] == runs[1]
