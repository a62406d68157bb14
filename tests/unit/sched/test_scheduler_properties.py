"""Scheduler properties under a deterministic fake executor (no model, no torch): a hypothesis
state machine per loop (normal; overlap with one plan in flight, as OverlapLoop does), normal
vs overlap equivalence, and strict xfails pinning known scheduler bugs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from qnext.worker.sched.cache import PageAllocator, StateSlotAllocator
from qnext.worker.sched.plan import SampledToken, StepResult
from qnext.worker.sched.request import FinishReason, Request, SamplingParams, Sequence
from qnext.worker.sched.request import SequenceStatus as Status
from qnext.worker.sched.scheduler import Scheduler, SchedulerLimits

VOCAB, EOS = 13, 12
STOP, LENGTH, ABORT = FinishReason.STOP, FinishReason.LENGTH, FinishReason.ABORT


def sample_token(seq_id: int, params: SamplingParams, counter: int) -> int:
    """Pure in (seq_id, counter); like the sampler, no EOS/stop id while counter < min_new."""
    tok = (seq_id * 31 + counter * 7) % VOCAB
    while counter < params.min_new_tokens and (tok == EOS or tok in params.stop_token_ids):
        tok = (tok + 1) % VOCAB
    return tok


def is_stop(tok: int, params: SamplingParams) -> bool:
    return tok in params.stop_token_ids or (tok == EOS and not params.ignore_eos)


def pages_for(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size)


class Harness:
    """A Scheduler driven by the normal or the overlap loop, and a fake executor that checks
    every SeqWork against a model of the KV pages and state slots before 'sampling'."""

    def __init__(self, overlap, num_pages, page_size, num_slots, chunk, max_prefill, running):
        self.lim = SchedulerLimits(running, max_prefill, chunk, page_size, 10**6)
        self.s = Scheduler(self.lim, PageAllocator(num_pages), StateSlotAllocator(num_slots),
                           (EOS,))
        self.overlap, self.flight, self.ps = overlap, None, page_size
        self.kv: dict[tuple[int, int], tuple[int, int]] = {}  # (page, offset) -> (seq, token)
        self.slot: dict[int, tuple[int | None, int]] = {}  # slot -> (seq, tokens fed)
        self.refs: dict[int, Sequence] = {}
        self.said: dict[int, list[int]] = {}  # tokens announced by update()
        self.ended: dict[int, FinishReason] = {}  # finishes announced (update, or abort())
        self.last: dict[int, tuple[int, int]] = {}  # seq -> (epoch, counter) of last sample
        self.released: set[int] = set()

    def truth(self, sid: int, n: int) -> list[int]:
        """The first n tokens (prompt, then outputs) the sequence must ever see."""
        req = self.refs[sid].request
        outs = [sample_token(sid, req.sampling, c) for c in range(n - len(req.prompt_ids))]
        return [*req.prompt_ids, *outs][:n]

    def add(self, prompt, params: SamplingParams) -> None:
        sid = len(self.refs)
        seq = Sequence(sid, Request(f"r{sid}", tuple(prompt), params), seed=sid, arrival=sid)
        self.refs[sid], self.said[sid] = seq, []
        self.s.add(seq)

    def abort(self, sid: int) -> None:
        was_done = self.refs[sid].is_finished
        got = self.s.abort(sid)
        assert (got is None) == was_done
        if got is not None:
            assert got.finish_reason is ABORT
            self.ended[sid] = ABORT

    def step(self) -> None:
        """NormalLoop.step, or OverlapLoop.step (plan N+1 before update(N)) with `overlap`."""
        decoding = {s.seq_id: s.num_computed for s in self.s.running
                    if s.num_pending == 0 or (s.num_pending == 1 and s.output_ids)}
        plan = self.s.schedule()
        previous, self.flight = self.flight, None
        if plan is not None:
            self.check_plan(plan, decoding)
            result = self.execute(plan, previous)
            if not self.overlap:
                return self.note(self.s.update(plan, result))
            self.flight = (plan, result)
        if previous is not None:
            self.note(self.s.update(*previous))

    def check_plan(self, plan, decoding) -> None:
        assert len({w.seq_id for w in plan.work}) == len(plan.work)
        assert not set(plan.released) & self.released  # each seq released once, when done
        assert all(self.refs[sid].is_finished and sid not in self.s.seqs for sid in plan.released)
        self.released |= set(plan.released)
        prefill = 0
        for w in plan.work:
            seq, end = self.s.seqs[w.seq_id], w.prefix_len + w.num_new
            assert seq.status is Status.RUNNING and w.seq_id not in self.released
            assert end == seq.num_computed <= seq.num_tokens + w.future_token
            assert (w.sample is not None) == (w.future_token or end == seq.num_tokens)
            if not (decoding.get(w.seq_id) == w.prefix_len and w.num_new == 1):
                assert not w.future_token and w.num_new <= (self.lim.chunk_size or w.num_new)
                prefill += w.num_new  # a prompt chunk (or a recompute after preemption)
            if w.sample is None:
                continue
            epoch, old = seq.num_preemptions, self.last.get(w.seq_id)
            assert w.sample.counter == end - seq.prompt_len and w.sample.seed == seq.seed
            if old is not None and old[0] == epoch:
                assert w.sample.counter == old[1] + 1
            else:  # first sample, or first after a preemption: continues from the outputs
                assert not w.future_token and w.sample.counter == len(seq.output_ids)
            self.last[w.seq_id] = (epoch, w.sample.counter)
        assert prefill <= self.lim.max_prefill_tokens

    def execute(self, plan, previous) -> StepResult:
        """The fake model: checks what each SeqWork reads, writes its tokens, samples."""
        fed_before = {t.seq_id: t.token_id for t in previous[1].tokens} if previous else {}
        for z in plan.zero_slots:
            self.slot[z] = (None, 0)
        out, ps = [], self.ps
        for w in plan.work:
            sid, end = w.seq_id, w.prefix_len + w.num_new
            assert w.state_slot and 0 not in w.page_ids and len(set(w.page_ids)) == len(w.page_ids)
            assert len(w.page_ids) == pages_for(end, ps)
            fresh = w.prefix_len == 0  # else the slot holds exactly this seq's prefix
            assert self.slot.get(w.state_slot) == ((None, 0) if fresh else (sid, w.prefix_len))
            truth = self.truth(sid, end)
            for p in range(w.prefix_len):
                assert self.kv[w.page_ids[p // ps], p % ps] == (sid, truth[p]), "KV clobbered"
            fed = (fed_before[sid],) if w.future_token else w.token_ids
            assert list(fed) == truth[w.prefix_len:end]
            for p in range(w.prefix_len, end):
                self.kv[w.page_ids[p // ps], p % ps] = (sid, truth[p])
            self.slot[w.state_slot] = (sid, end)
            if w.sample is not None:
                out.append(SampledToken(sid, sample_token(sid, w.sample.params, w.sample.counter)))
        return StepResult(plan.step_id, tuple(out))

    def note(self, outputs) -> None:
        for o in outputs:
            assert o.token_id is not None and o.seq_id not in self.ended
            self.said[o.seq_id].append(o.token_id)
            if o.finish_reason is not None:
                self.ended[o.seq_id] = o.finish_reason

    def drain(self, limit: int = 1000) -> None:
        for _ in range(limit):
            if self.flight is None and not self.s.has_work:
                return self.check_drained()
            self.step()
            self.check()
        raise AssertionError(f"not drained after {limit} steps")

    def check(self) -> None:
        s = self.s
        s.pages.check_integrity()
        s.slots.check_integrity()
        live = list(s.seqs.values())
        pages = [p for q in live for p in q.page_ids]
        slots = [q.state_slot for q in live if q.state_slot is not None]
        for held, alloc in ((pages, s.pages), (slots, s.slots)):
            assert 0 not in held and len(set(held)) == len(held)
            assert len(held) == alloc.num_total - alloc.num_free
        assert all(len(q.page_ids) == pages_for(q.num_computed, self.ps) for q in live)
        run, wait = {q.seq_id for q in s.running}, {q.seq_id for q in s.waiting}
        assert not run & wait and len(run) == len(s.running) <= self.lim.max_running_requests
        assert all(q.status is Status.RUNNING and q.state_slot is not None for q in s.running)
        assert all(q.status is Status.WAITING and q.state_slot is None and not q.page_ids
                   and q.num_computed == 0 for q in s.waiting)
        for sid, q in self.refs.items():
            out, sp = q.output_ids, q.request.sampling
            assert q.is_finished == (sid not in run | wait)
            assert sid in s.seqs or (q.is_finished and not q.page_ids and q.state_slot is None)
            assert len(out) <= sp.max_new_tokens and self.said[sid] == out
            assert out == self.truth(sid, q.num_tokens)[q.prompt_len:]
            assert not any(is_stop(t, sp) for t in out[:-1])
            # Known bug (test_overlap_lone_sequence_keeps_its_last_token): the overlap loop can
            # finish a sequence with LENGTH inside schedule(), silently and short of max_new.
            silent = self.overlap and q.finish_reason is LENGTH and sid not in self.ended
            if q.is_finished:
                assert self.ended.get(sid) == q.finish_reason or silent, "finish not announced"
            if q.finish_reason is STOP:
                assert is_stop(out[-1], sp) and len(out) - 1 >= sp.min_new_tokens
            elif q.finish_reason is LENGTH:
                assert len(out) == sp.max_new_tokens or silent
            elif out and not q.is_finished:
                assert not is_stop(out[-1], sp)

    def check_drained(self) -> None:
        s = self.s
        assert not s.has_work and not s.seqs and not s.running and not s.waiting
        assert all(q.is_finished for q in self.refs.values())
        assert s.pages.num_free == s.pages.num_total and s.slots.num_free == s.slots.num_total
        assert not self.released & set(s._released)
        assert self.released | set(s._released) == set(self.refs)


CONFIG = dict(num_pages=st.integers(3, 40), page_size=st.integers(1, 4),
              num_slots=st.integers(2, 6), chunk=st.one_of(st.none(), st.integers(1, 8)),
              max_prefill=st.integers(1, 16), running=st.integers(1, 5))


@st.composite
def requests(draw, capacity: int):
    """(prompt, params) fitting a pool of `capacity` tokens alone, overlap's extra decode too."""
    new = draw(st.integers(1, min(8, capacity - 1)))
    prompt = draw(st.lists(st.integers(0, VOCAB - 1), min_size=1,
                           max_size=min(20, capacity - new)))
    return prompt, SamplingParams(
        max_new_tokens=new, min_new_tokens=draw(st.integers(0, new)),
        stop_token_ids=tuple(draw(st.sets(st.integers(0, VOCAB - 1), max_size=3))),
        ignore_eos=draw(st.booleans()))


class _SchedulerMachine(RuleBasedStateMachine):
    overlap = False

    @initialize(**CONFIG)
    def setup(self, **cfg):
        self.h = Harness(self.overlap, **cfg)

    @rule(data=st.data())
    def add(self, data):
        self.h.add(*data.draw(requests(self.h.s.pages.num_total * self.h.ps)))

    @rule(data=st.data())
    def abort(self, data):
        if self.h.refs:
            self.h.abort(data.draw(st.sampled_from(sorted(self.h.refs))))

    @rule(n=st.integers(1, 4))
    def step(self, n):
        for _ in range(n):
            self.h.step()

    @rule()
    def drain(self):
        self.h.drain()

    @invariant()
    def invariants(self):
        if hasattr(self, "h"):
            self.h.check()

    def teardown(self):
        if hasattr(self, "h"):
            self.h.drain()


class NormalMachine(_SchedulerMachine):
    overlap = False


class OverlapMachine(_SchedulerMachine):
    overlap = True


_SETTINGS = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestNormalMachine = NormalMachine.TestCase
TestNormalMachine.settings = _SETTINGS
TestOverlapMachine = OverlapMachine.TestCase
TestOverlapMachine.settings = _SETTINGS


def run_all(overlap: bool, cfg: dict, reqs) -> dict:
    h = Harness(overlap, **cfg)
    for prompt, params in reqs:
        h.add(prompt, params)
    h.drain()
    return {sid: (q.output_ids, q.finish_reason, h.ended.get(sid)) for sid, q in h.refs.items()}


@st.composite
def workloads(draw, roomy: bool):
    cfg = draw(st.fixed_dictionaries({**CONFIG, "num_pages": st.integers(3, 16)}))
    reqs = draw(st.lists(requests((cfg["num_pages"] - 1) * cfg["page_size"]), min_size=1,
                         max_size=6))
    if roomy:  # every request fits at once: no preemption, only queueing / chunking / slots
        need = sum(pages_for(len(p) + sp.max_new_tokens, cfg["page_size"]) for p, sp in reqs)
        cfg["num_pages"] = max(cfg["num_pages"], need + 1)
    return cfg, reqs


@settings(max_examples=100, deadline=None)
@given(workloads(roomy=True))
def test_overlap_matches_normal_without_page_pressure(work):
    assert run_all(False, *work) == run_all(True, *work)


TIGHT = (dict(num_pages=7, page_size=1, num_slots=3, chunk=None, max_prefill=3, running=2),
         [([0], SamplingParams(max_new_tokens=1)), ([0] * 4, SamplingParams(max_new_tokens=1))])


@pytest.mark.xfail(strict=True, reason="overlap: a lone running sequence is finished with "
                   "LENGTH while a finished in-flight sequence still holds the pages it needs")
@settings(max_examples=100, deadline=None)
@example(TIGHT)
@given(workloads(roomy=False))
def test_overlap_matches_normal_under_preemption(work):
    assert run_all(False, *work) == run_all(True, *work)


LONE = dict(num_pages=5, page_size=1, num_slots=2, chunk=None, max_prefill=16, running=1)


@pytest.mark.xfail(strict=True, reason="overlap: the wasted decode after a sequence's last token "
                   "does not fit, so schedule() finishes it (LENGTH, unannounced) and update() "
                   "then drops the real last token still in flight")
def test_overlap_lone_sequence_keeps_its_last_token():
    reqs = [([1, 2, 3], SamplingParams(max_new_tokens=2))]  # 3 + 2 - 1 tokens fit 4 pages
    assert run_all(False, LONE, reqs) == {0: ([0, 7], LENGTH, LENGTH)}
    assert run_all(True, LONE, reqs) == {0: ([0, 7], LENGTH, LENGTH)}  # got ([0], LENGTH, None)


@pytest.mark.xfail(strict=True, reason="a sequence finished inside schedule() (it outgrew the "
                   "pool) gets no SeqOutput and keeps its pages and slot after has_work is False")
def test_sequence_outgrowing_the_pool_is_announced_and_freed():
    h = Harness(False, **{**LONE, "num_pages": 4})
    h.add([1, 2, 3], SamplingParams(max_new_tokens=8))  # the 4th token has no page
    for _ in range(5):
        h.step()
    assert not h.s.has_work and h.refs[0].finish_reason is LENGTH
    assert h.ended == {0: LENGTH}  # got {}: the engine's generate() would wait forever
    assert h.s.pages.num_free == h.s.pages.num_total  # got 0 of 3


@pytest.mark.xfail(strict=True, reason="scheduler accepts a stop id at output index "
                   "min_new_tokens-1; the sampler blocks them while counter < min_new_tokens")
def test_stop_id_below_min_new_tokens_does_not_finish():
    s = Scheduler(SchedulerLimits(1, 16, None, 1, 10**6), PageAllocator(8), StateSlotAllocator(2))
    params = SamplingParams(max_new_tokens=4, min_new_tokens=2, stop_token_ids=(5,))
    s.add(Sequence(0, Request("r", (1,), params), seed=0))
    outs = []
    for tok in (3, 5):  # 5 at counter 1 < min_new_tokens: the sampler would never draw it
        plan = s.schedule()
        outs += s.update(plan, StepResult(plan.step_id, (SampledToken(0, tok),)))
    assert outs[-1].finish_reason is None  # got STOP with 2 outputs


def test_scheduler_imports_no_torch():
    code = ("import sys, qnext.worker.sched.scheduler, qnext.worker.sched.plan; "
            "assert 'torch' not in sys.modules, 'qnext.worker.sched imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
