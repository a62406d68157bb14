"""Speculative decoding in the scheduler under the fake executor of test_scheduler_properties:
verify steps keep a pseudo-random number of proposals, in the normal and the overlap loop
(where a verify is planned while the sequence's previous one is in flight and the fake worker,
like the real one, learns the prefix shift only when it runs it). Every step reads only KV and
state that hold exactly its sequence's prefix, snapshots planned inside a verify hold what
they claim once published (extra_buffer hits read them), outputs are those of plain decoding,
and every page and slot comes back."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from hypothesis.stateful import initialize, rule

from qnext.worker.sched.plan import SampledToken
from qnext.worker.sched.request import SamplingParams as SP, Sequence
from tests.unit.sched.test_prefix_properties import NoBufferMachine, radix_config, shared_prompt
from tests.unit.sched.test_scheduler_properties import Harness

N = 3  # tokens per verify (root + 2 proposals); chains: scratch = N - 2


class SpecHarness(Harness):
    def __init__(self, overlap, **cfg) -> None:
        super().__init__(overlap, **cfg, spec=(N, N - 2))
        self.scratch = N - 2
        self.accepted: dict[int, int] = {}  # seq -> proposals its newest verify kept

    def add(self, prompt, params) -> None:
        """Prompts cut to what fits the pool with room to decode: the engine rejects a prompt
        the KV pool cannot hold before it reaches the scheduler (`Engine._validate`)."""
        super().add(prompt[:max(1, self.s.pages.num_total - 2)], params)

    def run_work(self, w, fed_before):
        if not w.spec_verify:
            return super().run_work(w, fed_before)
        sid = w.seq_id
        start = w.prefix_len + (self.accepted[sid] if w.after_verify else 0)
        assert len(w.page_ids) >= start + N + self.scratch
        truth = tuple(self.truth(sid, start + N + 1))
        assert self.slot.get(w.state_slot) == truth[:start]
        for p in range(start):
            assert self.kv[w.page_ids[p], 0] == truth[:p + 1]
        assert (fed_before[sid] if w.future_token else w.token_ids[0]) == truth[start]
        counter = w.sample.counter + (self.accepted[sid] if w.after_verify else 0)
        assert counter == start + 1 - self.refs[sid].prompt_len
        kept = (sid * 5 + counter * 3) % N  # the worker's acceptance, pure in (seq, counter)
        for p in range(start, start + N):  # rejected positions hold garbage
            self.kv[w.page_ids[p], 0] = truth[:p + 1] if p <= start + kept else None
        self.slot[w.state_slot] = truth[:start + kept + 1]
        if w.snapshot_slot is not None and 0 <= w.snapshot_len - start - 1 <= kept:
            self.slot[w.snapshot_slot] = truth[:w.snapshot_len]  # else the dummy slot 0
        self.accepted[sid] = kept
        return [SampledToken(sid, t) for t in truth[start + 1:start + kept + 2]]

    def pages_fit(self, w, end: int) -> bool:
        drafts_after = w.spec_draft and w.sample is not None  # the prompt's last chunk
        return len(w.page_ids) >= end + (self.scratch if drafts_after else 0)

    def next_counter_ok(self, last: int, counter: int) -> bool:
        return counter > last  # a verify emits up to N tokens

    def holds_its_pages(self, q: Sequence) -> bool:
        return len(q.page_ids) >= q.num_computed  # scratch pages stay while a step is in flight


def _params(draw) -> SP:
    """Mostly speculating requests; some with min_new_tokens decode plainly beside them."""
    new = draw(st.integers(1, 10))
    return SP(max_new_tokens=new, min_new_tokens=draw(st.sampled_from([0, 0, 0, 1])),
              stop_token_ids=tuple(draw(st.sets(st.integers(0, 12), max_size=2))),
              ignore_eos=draw(st.booleans()))


class SpecMachine(NoBufferMachine):
    strategy, overlap = "off", False

    @initialize(data=st.data())
    def setup(self, data):
        cfg = data.draw(radix_config("extra_buffer", self.overlap))
        cfg |= dict(page_size=1, strategy=self.strategy, interval=data.draw(
            st.sampled_from([4, 8])))
        self.h = SpecHarness(self.overlap, **cfg)

    @rule(data=st.data(), n=st.integers(1, 3))
    def add(self, data, n):
        seen = [[*q.request.prompt_ids, *q.output_ids] for q in self.h.refs.values()]
        for _ in range(n):
            self.h.add(data.draw(shared_prompt(seen)), _params(data.draw))


class SpecOverlapMachine(SpecMachine):
    overlap = True


class SpecExtraBufferMachine(SpecMachine):
    strategy = "extra_buffer"


class SpecExtraBufferOverlapMachine(SpecMachine):
    strategy, overlap = "extra_buffer", True


for machine in (SpecMachine, SpecOverlapMachine, SpecExtraBufferMachine,
                SpecExtraBufferOverlapMachine):
    machine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestSpec = SpecMachine.TestCase
TestSpecOverlap = SpecOverlapMachine.TestCase
TestSpecExtraBuffer = SpecExtraBufferMachine.TestCase
TestSpecExtraBufferOverlap = SpecExtraBufferOverlapMachine.TestCase


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_overlap_speculation_matches_normal(data):
    cfg = dict(num_pages=data.draw(st.integers(12, 48)), page_size=1,
               num_slots=data.draw(st.integers(4, 10)), chunk=data.draw(st.none()
                                                                        | st.integers(1, 8)),
               max_prefill=data.draw(st.integers(1, 16)), running=data.draw(st.integers(1, 4)))
    reqs = [(data.draw(st.lists(st.integers(0, 12), min_size=1, max_size=12)),
             _params(data.draw)) for _ in range(data.draw(st.integers(1, 5)))]

    def run(overlap):
        h = SpecHarness(overlap, **cfg)
        for prompt, params in reqs:
            h.add(prompt, params)
        h.drain()
        return {sid: (q.output_ids, q.finish_reason) for sid, q in h.refs.items()}

    assert run(False) == run(True)
