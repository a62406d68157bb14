"""Prefix caching end to end on the tiny model (fp32): a cache hit gives the same greedy tokens
and the same logits as the cache disabled, multi-turn chats hit on every later turn,
extra_buffer snapshots at branching positions, and eviction under pressure stays correct —
for no_buffer (page 1) and extra_buffer (pages 1 and 16), in the normal and overlap loops."""

from __future__ import annotations

import pytest
import torch

from qnext.worker.sched.request import Request, SamplingParams
from tests.engine.helpers import assert_pools_at_baseline, make_engine, random_prompts

VOCAB = 384
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6, ignore_eos=True)
CASES = [("no_buffer", 1, False), ("no_buffer", 1, True), ("extra_buffer", 1, False),
         ("extra_buffer", 16, False), ("extra_buffer", 16, True)]
IDS = ["no_buffer", "no_buffer-overlap", "extra_buffer", "extra_buffer-page16",
       "extra_buffer-page16-overlap"]


@pytest.fixture(scope="module")
def path(tiny_checkpoint):
    return tiny_checkpoint("tiny")


def engine_for(path, radix, page_size=1, overlap=False, **kw):
    kw = dict(chunk=64, max_prefill_tokens=256, max_total_tokens=4096) | kw
    return make_engine(path, radix=radix, page_size=page_size, overlap=overlap, **kw)


def record_logits(engine) -> list[torch.Tensor]:
    """Every row of logits the engine samples from, in order (a spy on the real sampler)."""
    rows, sample = [], engine.executor.sampler.sample

    def spy(logits, *args, **kwargs):
        rows.extend(logits.detach().clone())
        return sample(logits, *args, **kwargs)

    engine.executor.sampler.sample = spy
    return rows


def run_turns(engine, first: list[int], turns: int, extra: int = 30):
    """A chat: each turn's prompt is the previous prompt + its answer + `extra` new tokens.
    Returns [(prompt, output ids, cached tokens, logits rows of this turn)]."""
    rows, out, prompt = record_logits(engine), [], first
    new_ids = random_prompts(turns, extra, extra + 1, VOCAB, seed=5)
    for turn in range(turns):
        start = len(rows)
        res = engine.generate([prompt], GREEDY)[0]
        out.append((prompt, res.output_ids, res.cached_tokens,
                    rows[start:start + GREEDY.max_new_tokens]))
        prompt = [*prompt, *res.output_ids, *new_ids[turn]]
    return out


@pytest.mark.parametrize("strategy,page_size,overlap", CASES, ids=IDS)
def test_multi_turn_hits_give_the_same_tokens_and_logits(path, strategy, page_size, overlap):
    first = random_prompts(1, 100, 101, VOCAB, seed=3)[0]
    cached = run_turns(engine_for(path, strategy, page_size, overlap), first, turns=3)
    plain = run_turns(engine_for(path, "off", page_size), first, turns=3)
    for turn, ((prompt, ids, hit, rows), (_, want, _, want_rows)) in enumerate(
            zip(cached, plain)):
        assert ids == want, f"turn {turn}"
        assert (hit > 0) == (turn > 0), f"turn {turn} reused {hit} tokens"
        assert hit % page_size == 0 and hit < len(prompt)
        diff = max((a - b).abs().max().item() for a, b in zip(rows, want_rows))
        assert len(rows) == len(want_rows) and diff <= 1e-5, f"turn {turn}: {diff}"


@pytest.mark.parametrize("chunk", [None, 64], ids=["whole-prompt", "chunked"])
def test_extra_buffer_hits_at_the_branching_position(path, chunk):
    shared = random_prompts(1, 150, 151, VOCAB, seed=8)[0]
    tails = random_prompts(3, 50, 51, VOCAB, seed=9)
    prompts = [shared + tail for tail in tails]  # 150 shared tokens, then 50 different ones
    engine = engine_for(path, "extra_buffer", chunk=chunk, max_prefill_tokens=512)
    got = [engine.generate([p], GREEDY)[0] for p in prompts]
    # whole prompts: the first only snapshots at 192, past the branch, so the second finds
    # KV but no state there; it snapshots at the branching position 128 = floor(150/64)*64,
    # where the third resumes. Chunked: chunk boundaries 64 and 128 are cached as well.
    want = [0, 0, 128] if chunk is None else [0, 128, 128]
    assert [g.cached_tokens for g in got] == want
    plain = engine_for(path, "off").generate(prompts, GREEDY)
    assert [g.output_ids for g in got] == [p.output_ids for p in plain]
    assert_pools_at_baseline(engine)


@pytest.mark.parametrize("strategy,page_size,overlap", CASES[:2] + CASES[-1:],
                         ids=IDS[:2] + IDS[-1:])
def test_eviction_under_pressure_keeps_results_correct(path, strategy, page_size, overlap):
    shared = random_prompts(2, 130, 131, VOCAB, seed=21)
    tails = random_prompts(10, 5, 40, VOCAB, seed=22)
    prompts = [shared[i % 2] + tail for i, tail in enumerate(tails)]
    kw = dict(max_total_tokens=800, max_mamba_cache_size=12, chunk=64)
    engine = engine_for(path, strategy, page_size, overlap, **kw)
    for p in prompts[:4]:  # warm the cache so later admissions must evict
        engine.generate([p], GREEDY)
    for i, p in enumerate(prompts):
        engine.add(_request(i, p))
    outputs: dict[str, list[int]] = {}
    while engine.has_work:
        for o in engine.step():
            outputs.setdefault(o.request_id, []).extend([] if o.token_id is None
                                                        else [o.token_id])
        engine.scheduler.cache.check_integrity()  # after every step
    stats = engine.stats()["prefix_cache"]
    assert stats["evicted_pages"] + stats["evicted_slots"] > 0, stats
    assert stats["cached_tokens"] > 0, stats
    plain = engine_for(path, "off", page_size).generate(prompts, GREEDY)
    assert [outputs[f"p{i}"] for i in range(len(prompts))] == [p.output_ids for p in plain]
    assert_pools_at_baseline(engine)


def _request(i: int, prompt: list[int]) -> Request:
    return Request(f"p{i}", tuple(prompt), GREEDY)


def test_every_strategy_keeps_the_overlap_loop(path):
    """Unlike SGLang's no_buffer, which turns overlap scheduling off (engine.overlap_for)."""
    from qnext.worker.engine.loop import OverlapLoop

    for radix in ("no_buffer", "extra_buffer", "off"):
        assert isinstance(make_engine(path, radix=radix, overlap=True).loop, OverlapLoop)


def test_stats_report_the_cache(path):
    engine = engine_for(path, "no_buffer")
    prompt = random_prompts(1, 40, 41, VOCAB, seed=1)[0]
    out = engine.generate([prompt, prompt], GREEDY)  # together: no hit, nothing cached yet
    # no_buffer keeps the state only where a sequence ended (prompt + answer - 1 tokens), so
    # a repeated prompt would find KV but no state; the next chat turn finds both
    engine.generate([prompt + out[0].output_ids + [7]], GREEDY)
    stats = engine.stats()["prefix_cache"]
    assert stats["strategy"] == "no_buffer" and stats["prompt_tokens"] == 2 * 40 + 47
    assert stats["cached_tokens"] == 45 and stats["hit_rate"] == pytest.approx(45 / 127)
    assert stats["num_cached_pages"] > 0 and stats["num_cached_slots"] > 0
    assert stats["protected_pages"] == stats["protected_slots"] == 0
    assert not engine.has_work
    assert engine.flush_cache() == (stats["num_cached_pages"], stats["num_cached_slots"])
    assert engine.stats()["prefix_cache"]["num_cached_pages"] == 0


@pytest.mark.parametrize("overlap", [False, True], ids=["normal", "overlap"])
def test_extra_buffer_snapshots_while_decoding(path, overlap):
    """Every --mamba-track-interval decoded tokens the state is snapshotted; the next turn
    resumes from the last one (128 here, inside the answer), not from the prompt's 64."""
    long = SamplingParams(temperature=0.0, max_new_tokens=40, ignore_eos=True)
    first = random_prompts(1, 100, 101, VOCAB, seed=4)[0]
    results = []
    for radix in ("extra_buffer", "off"):
        engine = engine_for(path, radix, overlap=overlap, track_interval=64)
        one = engine.generate([first], long)[0]
        two = engine.generate([first + one.output_ids + [3, 4, 5]], long)[0]
        results.append((one.output_ids, two.output_ids, two.cached_tokens))
    assert results[0][2] == 128 and results[1][2] == 0
    assert results[0][:2] == results[1][:2]


def test_extra_buffer_caches_a_prompt_while_its_request_still_runs(path):
    """A prompt is published when its prefill ends, not when its request finishes: requests
    arriving while the first still decodes learn the branching point and then hit it."""
    shared = random_prompts(1, 150, 151, VOCAB, seed=8)[0]
    prompts = [shared + tail for tail in random_prompts(3, 50, 51, VOCAB, seed=9)]
    long = SamplingParams(temperature=0.0, max_new_tokens=30, ignore_eos=True)
    engine = engine_for(path, "extra_buffer", chunk=None, max_prefill_tokens=512)
    finished = {}
    for i, prompt in enumerate(prompts):
        engine.add(Request(f"p{i}", tuple(prompt), long))
        for _ in range(3):  # its prefill and two decodes; every earlier request still runs
            finished.update({o.request_id: o for o in engine.step() if o.finish_reason})
    assert not finished and len(engine.scheduler.running) == 3
    while engine.has_work:
        finished.update({o.request_id: o for o in engine.step() if o.finish_reason})
    assert [finished[f"p{i}"].cached_tokens for i in range(3)] == [0, 0, 128]
    assert_pools_at_baseline(engine)


def test_extra_buffer_overlap_gives_the_outputs_of_the_normal_loop(path):
    """Concurrent chats sharing a system prompt, chunked, page size 16, decode snapshots."""
    system = random_prompts(1, 140, 141, VOCAB, seed=30)[0]
    users = random_prompts(6, 10, 90, VOCAB, seed=31)
    prompts = [system + u for u in users]
    long = SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True)
    runs = []
    for overlap in (False, True):
        engine = engine_for(path, "extra_buffer", 16, overlap, max_prefill_tokens=128,
                            track_interval=64)
        first = engine.generate(prompts[:3], long)
        second = engine.generate([p + o.output_ids + [1, 2] for p, o in zip(prompts, first)]
                                 + prompts[3:], long)
        assert all(o.cached_tokens > 0 for o in second[:3])
        runs.append([o.output_ids for o in first + second])
        assert_pools_at_baseline(engine)
    assert runs[0] == runs[1]
