"""Request semantics through the engine: seeded sampling independent of the batch, every finish
reason, abort at every phase, logprobs, and clear rejection of bad requests. Pools return to
their initial free counts after every test."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from qnext.worker.engine import Engine
from qnext.worker.sched.request import (
    FinishReason,
    QueueFull,
    Request,
    RequestRejected,
    SamplingParams,
)
from tests.engine.helpers import (
    assert_pools_at_baseline,
    engine_config,
    make_engine,
    random_prompts,
)
from tests.models.harness import hf_logits, hf_model


@pytest.fixture(scope="module")
def path(tiny_checkpoint):
    return tiny_checkpoint("tiny")


def _run_until_done(engine, request_ids) -> dict[str, list]:
    got = {rid: [] for rid in request_ids}
    reasons = {}
    for _ in range(10_000):  # a bound, so a scheduling bug fails instead of hanging
        if len(reasons) == len(request_ids):
            break
        for out in engine.step():
            if out.request_id in got:
                if out.token_id is not None:
                    got[out.request_id].append(out.token_id)
                if out.finish_reason is not None:
                    reasons[out.request_id] = out.finish_reason
    engine.settle()
    return {rid: (got[rid], reasons[rid]) for rid in request_ids}


@pytest.mark.parametrize("overlap", [False, True], ids=["normal", "overlap"])
def test_seeded_sampling_independent_of_batch(path, overlap):
    params = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=16, seed=1234,
                            ignore_eos=True)
    alone = make_engine(path, overlap=overlap).generate([[5, 6, 7, 8]], params)[0].output_ids
    others = random_prompts(11, 1, 50, 384, seed=3)
    engine = make_engine(path, overlap=overlap, max_total_tokens=180, chunk=8, seed=99)
    mixed = engine.generate(others[:5] + [[5, 6, 7, 8]] + others[5:],
                            [SamplingParams(temperature=0.9, max_new_tokens=20)] * 5 + [params]
                            + [SamplingParams(temperature=0.0, max_new_tokens=9)] * 6)
    assert mixed[5].output_ids == alone
    assert len(set(alone)) > 3  # it really sampled
    assert_pools_at_baseline(engine)


def test_unseeded_requests_differ_but_engine_seed_reproduces(path):
    params = SamplingParams(temperature=1.0, max_new_tokens=12, ignore_eos=True)
    first = make_engine(path, seed=1).generate([[9, 9, 9]] * 2, params)
    again = make_engine(path, seed=1).generate([[9, 9, 9]] * 2, params)
    assert first[0].output_ids != first[1].output_ids
    assert [o.output_ids for o in first] == [o.output_ids for o in again]


def test_stop_token_min_new_tokens_and_length(path):
    engine = make_engine(path)
    greedy = engine.generate([[1, 2, 3]], SamplingParams(temperature=0, max_new_tokens=8,
                                                          ignore_eos=True))[0].output_ids
    stop_at = greedy[3]
    first = greedy.index(stop_at)
    out = engine.generate([[1, 2, 3]], SamplingParams(temperature=0, max_new_tokens=8,
                                                       stop_token_ids=(stop_at,)))[0]
    assert out.finish_reason is FinishReason.STOP and out.output_ids == greedy[:first + 1]
    held = engine.generate([[1, 2, 3]], SamplingParams(
        temperature=0, max_new_tokens=8, stop_token_ids=(stop_at,), min_new_tokens=6))[0]
    assert stop_at not in held.output_ids[:6] and len(held.output_ids) >= 6
    assert_pools_at_baseline(engine)


def test_eos_stops_unless_ignored(path, tmp_path):
    greedy = make_engine(path).generate([[4, 4]], SamplingParams(
        temperature=0, max_new_tokens=6, ignore_eos=True))[0].output_ids
    eos_path = shutil.copytree(path, tmp_path / "eos")
    cfg = json.loads((eos_path / "config.json").read_text())
    cfg["eos_token_id"] = greedy[2]
    (eos_path / "config.json").write_text(json.dumps(cfg))
    engine = make_engine(eos_path)
    stopped = engine.generate([[4, 4]], SamplingParams(temperature=0, max_new_tokens=6))[0]
    assert stopped.finish_reason is FinishReason.STOP
    assert stopped.output_ids == greedy[:greedy.index(greedy[2]) + 1]
    ignored = engine.generate([[4, 4]], SamplingParams(temperature=0, max_new_tokens=6,
                                                       ignore_eos=True))[0]
    assert ignored.finish_reason is FinishReason.LENGTH and ignored.output_ids == greedy
    assert_pools_at_baseline(engine)


def test_context_length_finishes_with_length(path):
    base = engine_config(path)
    engine = Engine(replace(base, sched=replace(base.sched, context_length=10,
                                                chunked_prefill_size=4)))
    out = engine.generate([[1] * 7], SamplingParams(temperature=0, max_new_tokens=50))[0]
    assert out.finish_reason is FinishReason.LENGTH and len(out.output_ids) == 3
    with pytest.raises(RequestRejected, match="context length"):
        engine.add(Request("long", tuple([1] * 10)))


@pytest.mark.parametrize("overlap", [False, True], ids=["normal", "overlap"])
@pytest.mark.parametrize("phase", ["queued", "prefilling", "decoding"])
def test_abort_at_every_phase(path, overlap, phase):
    engine = make_engine(path, overlap=overlap, chunk=4, max_prefill_tokens=4,
                         max_running_requests=1)
    params = SamplingParams(temperature=0, max_new_tokens=40, ignore_eos=True)
    engine.add(Request("a", tuple(range(1, 30)), params))
    engine.add(Request("b", tuple(range(1, 6)), params))
    target = {"queued": "b", "prefilling": "a", "decoding": "a"}[phase]
    steps = {"queued": 2, "prefilling": 3, "decoding": 12}[phase]
    for _ in range(steps):
        engine.step()
    seq = engine.scheduler.seqs[engine._ids[target]]
    assert (seq.output_ids == []) == (phase != "decoding")
    assert engine.abort(target) and not engine.abort(target)
    assert not engine.abort("never-added")
    results = _run_until_done(engine, ["a"] if target == "b" else ["b"])
    assert all(reason is FinishReason.LENGTH for _, reason in results.values())
    assert_pools_at_baseline(engine)


def test_logprobs_match_reference(path):
    engine = make_engine(path)
    prompt = [10, 20, 30, 40]
    out = engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=4,
                                                   logprobs=True, top_logprobs=3))[0]
    ref = torch.log_softmax(hf_logits(hf_model(path), prompt + out.output_ids), dim=-1)
    for i, (token, logprob) in enumerate(zip(out.output_ids, out.logprobs)):
        assert abs(logprob - ref[len(prompt) - 1 + i, token].item()) < 1e-4


@pytest.mark.parametrize("prompt,params,field", [
    ((), SamplingParams(), "prompt is empty"),
    ((1, 99999), SamplingParams(), "token ids"),
    ((1, 2), SamplingParams(temperature=-1.0), "temperature"),
    ((1, 2), SamplingParams(top_p=0.0), "top_p"),
    ((1, 2), SamplingParams(max_new_tokens=0), "max_new_tokens"),
    ((1, 2), SamplingParams(min_new_tokens=5, max_new_tokens=2), "min_new_tokens"),
    ((1, 2), SamplingParams(repetition_penalty=float("nan")), "repetition_penalty"),
    ((1, 2), SamplingParams(stop_token_ids=(100000,)), "stop_token_ids"),
])
def test_bad_requests_are_rejected(path, prompt, params, field):
    engine = make_engine(path)
    with pytest.raises(RequestRejected, match=field):
        engine.add(Request("x", prompt, params))
    engine.add(Request("ok", (1, 2), SamplingParams(max_new_tokens=1)))
    with pytest.raises(RequestRejected, match="duplicate"):
        engine.add(Request("ok", (1, 2)))
    assert _run_until_done(engine, ["ok"])["ok"][1] is FinishReason.LENGTH
    assert_pools_at_baseline(engine)


def test_waiting_queue_is_bounded(path):
    cfg = engine_config(path)
    engine = Engine(replace(cfg, sched=replace(cfg.sched, max_queued_requests=2)))
    params = SamplingParams(max_new_tokens=3, ignore_eos=True)
    engine.add(Request("a", (1, 2), params))
    engine.add(Request("b", (3, 4), params))
    with pytest.raises(QueueFull, match="--max-queued-requests"):
        engine.add(Request("c", (5, 6), params))
    done = _run_until_done(engine, ["a", "b"])
    assert [len(done[r][0]) for r in "ab"] == [3, 3]
    engine.add(Request("c", (5, 6), params))  # room again: the rejected id was never queued
    assert _run_until_done(engine, ["c"])["c"][1] is FinishReason.LENGTH
    assert_pools_at_baseline(engine)


@pytest.mark.parametrize("page_size,ssm", [(1, "float32"), (4, "bfloat16")])
def test_allocated_pools_match_the_memory_plan(path, page_size, ssm):
    """The plan's arithmetic and the tensors actually allocated agree byte for byte."""
    base = engine_config(path, page_size=page_size)
    engine = Engine(replace(base, cache=replace(base.cache, mamba_ssm_dtype=ssm)))
    plan, runner = engine.memory, engine.runner
    assert runner.kv_pool.bytes == plan.kv_pool_bytes
    assert runner.state_pool.bytes == plan.state_pool_bytes
    assert runner.state_pool.bytes_per_slot == plan.state_bytes_per_slot
    assert engine.stats()["num_free_pages"] == plan.num_pages - 1
