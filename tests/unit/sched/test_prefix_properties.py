"""Prefix caching in the scheduler under the fake executor of test_scheduler_properties: every
step reads only KV and state that hold exactly its sequence's prefix (whether its own, shared
from the tree or copied on write), the pools and the tree stay consistent, outputs are those
of the cache-free scheduler, and hits really happen (no_buffer, extra_buffer, both loops)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from hypothesis.stateful import initialize, rule

from qnext.worker.sched.memory import slots_per_request
from qnext.worker.sched.request import SamplingParams as SP

from tests.unit.sched.test_scheduler_properties import VOCAB, Harness, NormalMachine, run_all

BASES = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2, 3], [5] * 14]


def harness(strategy: str, overlap: bool = False, **kw) -> Harness:
    cfg = dict(num_pages=64, page_size=1, num_slots=12, chunk=None, max_prefill=64,
               running=4, strategy=strategy) | kw
    return Harness(overlap, **cfg)


@st.composite
def radix_config(draw, strategy: str, overlap: bool):
    page = 1 if strategy == "no_buffer" else draw(st.sampled_from([1, 2, 4]))
    spare = slots_per_request(strategy, overlap)
    return dict(num_pages=draw(st.integers(8, 24) | st.integers(24, 60)), page_size=page,
                num_slots=draw(st.integers(spare + 1, spare + 10)),
                chunk=draw(st.none() | st.integers(1, 8)), max_prefill=draw(st.integers(1, 16)),
                running=draw(st.integers(1, 4)), strategy=strategy,
                align=4, interval=draw(st.sampled_from([4, 8])))


@st.composite
def shared_prompt(draw, seen: list[list[int]]):
    """A prompt extending a base, an earlier prompt (+ its outputs: a later chat turn), or a
    prefix of one (a branch), so the cache has something to hit."""
    base = draw(st.sampled_from(BASES + seen))
    base = base[:draw(st.integers(1, len(base)))]
    return base + draw(st.lists(st.integers(0, VOCAB - 1), max_size=6))


class NoBufferMachine(NormalMachine):
    strategy, overlap = "no_buffer", False

    @initialize(data=st.data())
    def setup(self, data):
        self.h = Harness(self.overlap, **data.draw(radix_config(self.strategy, self.overlap)))

    @rule(data=st.data(), n=st.integers(1, 3))
    def add(self, data, n):
        seen = [[*q.request.prompt_ids, *q.output_ids] for q in self.h.refs.values()]
        for _ in range(n):
            prompt = data.draw(shared_prompt(seen))
            capacity = (self.h.s.pages.num_total - 1) * self.h.ps
            new = data.draw(st.integers(1, 8))
            self.h.add(prompt[:max(1, capacity - 1)], SP(max_new_tokens=new))


class NoBufferOverlapMachine(NoBufferMachine):
    strategy, overlap = "no_buffer", True


class ExtraBufferMachine(NoBufferMachine):
    strategy = "extra_buffer"


class ExtraBufferOverlapMachine(NoBufferMachine):
    strategy, overlap = "extra_buffer", True


for machine in (NoBufferMachine, NoBufferOverlapMachine, ExtraBufferMachine,
                ExtraBufferOverlapMachine):
    machine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestNoBuffer = NoBufferMachine.TestCase
TestNoBufferOverlap = NoBufferOverlapMachine.TestCase
TestExtraBuffer = ExtraBufferMachine.TestCase
TestExtraBufferOverlap = ExtraBufferOverlapMachine.TestCase


def run(h: Harness, prompts: list[list[int]], new: int = 3) -> list:
    """Each prompt runs alone, after the previous one finished; returns the sequences."""
    for prompt in prompts:
        h.add(prompt, SP(max_new_tokens=new))
        h.drain_keep_cache()
    return list(h.refs.values())


def test_multi_turn_hits_on_every_later_turn():
    for strategy, overlap in (("no_buffer", False), ("no_buffer", True),
                              ("extra_buffer", False), ("extra_buffer", True)):
        h = harness(strategy, overlap)
        turn = list(BASES[0])
        for _ in range(4):
            h.add(turn, SP(max_new_tokens=5))
            h.drain_keep_cache()
            last = h.refs[len(h.refs) - 1]
            turn = [*turn, *last.output_ids, 9, 10, 11, 12]
        cached = [q.num_cached_tokens for q in h.refs.values()]
        assert cached[0] == 0 and all(c > 0 for c in cached[1:]), (strategy, cached)
        if strategy == "no_buffer":  # everything computed was cached: all but the new turn
            # (the overlap loop's extra step of a finished sequence computed its last token)
            lengths = [len(q.request.prompt_ids) + len(q.output_ids) for q in h.refs.values()]
            assert cached[1:] == [n - (not overlap) for n in lengths[:-1]]


def test_extra_buffer_snapshots_at_the_branching_position():
    h = harness("extra_buffer", align=4)
    shared = [7] * 10
    seqs = run(h, [shared + [1, 2, 3, 4, 5, 6], shared + [2, 3], shared + [3, 4, 5]])
    # the first request cached 16 tokens (a multiple of 4); the second matched 10 tokens of
    # KV but no state beyond the root, so it snapshots at 8 = floor(10 / 4) * 4
    assert [q.num_cached_tokens for q in seqs] == [0, 0, 8]


def test_no_buffer_caches_chunk_boundaries_of_a_running_prompt():
    h = harness("no_buffer", chunk=4, max_prefill=4)
    h.add(list(range(10)), SP(max_new_tokens=2))
    h.step(), h.step()  # two 4-token chunks: the boundary at 4 is cached before chunk two
    h.add(list(range(6)) + [12], SP(max_new_tokens=1))
    h.drain_keep_cache()
    assert h.refs[1].num_cached_tokens == 4  # the first's prompt is still prefilling at 8


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_outputs_do_not_depend_on_the_cache_or_the_loop(data):
    cfg = data.draw(radix_config("extra_buffer", True)) | {"page_size": 1}
    seen: list[list[int]] = []
    reqs = []
    for _ in range(data.draw(st.integers(1, 6))):
        prompt = data.draw(shared_prompt(seen))[:cfg["num_pages"] - 2]
        seen.append(prompt)
        reqs.append((prompt, SP(max_new_tokens=data.draw(st.integers(1, 6)))))
    want = run_all(False, cfg | {"strategy": "off"}, reqs)
    for strategy, overlap in (("no_buffer", False), ("no_buffer", True),
                              ("extra_buffer", False), ("extra_buffer", True)):
        assert run_all(overlap, cfg | {"strategy": strategy}, reqs) == want, (strategy, overlap)
