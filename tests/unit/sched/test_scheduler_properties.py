"""Scheduler properties under a deterministic fake executor (no model, no torch): a state machine
per loop (normal; overlap as OverlapLoop), normal == overlap, and pins for the bugs found."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import example, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from qnext.worker.sched.cache import PageAllocator, StateSlotAllocator
from qnext.worker.sched.memory import slots_per_request
from qnext.worker.sched.plan import PageLists, SampledToken, StepResult
from qnext.worker.sched.request import FinishReason, Request, SamplingParams, Sequence
from qnext.worker.sched.request import SequenceStatus as Status
from qnext.worker.sched.scheduler import Scheduler, SchedulerLimits

VOCAB, EOS = 13, 12
STOP, LENGTH, ABORT = FinishReason.STOP, FinishReason.LENGTH, FinishReason.ABORT
SP = SamplingParams


def sample_token(seq_id: int, params: SamplingParams, counter: int) -> int:
    """Pure in (seq_id, counter); like the sampler, no EOS/stop id while counter < min_new."""
    tok = (seq_id * 31 + counter * 7) % VOCAB
    while counter < params.min_new_tokens and (tok == EOS or tok in params.stop_token_ids):
        tok = (tok + 1) % VOCAB
    return tok


def is_stop(tok: int, params: SamplingParams) -> bool:
    return tok in params.stop_token_ids or (tok == EOS and not params.ignore_eos)


class Harness:
    """A Scheduler, its loop, and a fake executor checking each SeqWork on modelled pages/slots."""

    def __init__(self, overlap, num_pages, page_size, num_slots, chunk, max_prefill, running,
                 strategy="off", align=4, interval=8, spec=(0, 0)):
        """`strategy`: the prefix cache; extra_buffer snapshots at multiples of `align` in
        prefill and of `interval` in decode (64 and 256 in the engine); `spec`: speculation's
        (tokens per verify, draft scratch) limits."""
        lim = SchedulerLimits(running, max_prefill, chunk, page_size, 10**6, strategy=strategy,
                              track_interval=interval, num_track_slots=1 + overlap,
                              snapshot_chunk=align,
                              admission_slots=slots_per_request(strategy, overlap),
                              spec_tokens=spec[0], spec_scratch=spec[1])
        self.s = Scheduler(lim, PageAllocator(num_pages), StateSlotAllocator(num_slots), (EOS,))
        self.lim, self.overlap, self.flight, self.ps = self.s.limits, overlap, None, page_size
        # kv: (page, offset) -> the tokens up to and including that position; slot -> the
        # tokens its state has consumed; said / ended: tokens / finishes announced;
        # last: seq -> (epoch, counter) of its last sample.
        self.kv, self.slot, self.refs, self.said, self.ended, self.last = {}, {}, {}, {}, {}, {}
        self.released, self.done = set(), set()  # done: finished, freed and checked
        self.page_lists = PageLists()  # plans carry page deltas, as a worker rebuilds them

    def truth(self, sid: int, n: int) -> list[int]:
        """The first n tokens (prompt, then outputs) the sequence must ever see."""
        req = self.refs[sid].request
        outs = (sample_token(sid, req.sampling, c) for c in range(n - len(req.prompt_ids)))
        return [*req.prompt_ids, *outs][:n]

    def add(self, prompt, params: SamplingParams) -> None:
        sid = len(self.refs)
        seq = Sequence(sid, Request(f"r{sid}", tuple(prompt), params), seed=sid, arrival=sid)
        self.refs[sid], self.said[sid] = seq, []
        self.s.add(seq)

    def abort(self, sid: int) -> None:  # None iff already finished; else announced
        was_done, got = self.refs[sid].is_finished, self.s.abort(sid)
        assert (got is None) == was_done and (was_done or got.finish_reason is ABORT)
        events = self.s.take_events()  # what the loop's next step reports
        assert was_done or any(e.request_id == f"r{sid}" and e.finish_reason is ABORT
                               for e in events)
        self.note(events)

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
        # with nothing to retire, take the finishes decided while planning (pool outgrown)
        self.note(self.s.update(*previous) if previous else self.s.take_events())

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
                assert self.next_counter_ok(old[1], w.sample.counter)
            else:  # first sample, or first after a preemption: continues from the outputs
                assert not w.future_token and w.sample.counter == len(seq.output_ids)
            self.last[w.seq_id] = (epoch, w.sample.counter)
        assert prefill <= self.lim.max_prefill_tokens

    def next_counter_ok(self, last: int, counter: int) -> bool:
        """A sequence's next sample follows its last one."""
        return counter == last + 1

    def execute(self, plan, previous) -> StepResult:
        """The fake model: checks what each SeqWork reads, writes its tokens, samples."""
        plan = self.page_lists.expand(plan)
        fed_before = {t.seq_id: t.token_id for t in previous[1].tokens} if previous else {}
        for z in plan.zero_slots:
            self.slot[z] = ()
        for src, dst in plan.copy_slots:  # in order: a snapshot may be copied on by a hit
            assert src in self.slot and src != dst
            self.slot[dst] = self.slot[src]
        out, snaps = [], [w.snapshot_slot for w in plan.work if w.snapshot_slot]
        assert len(set(snaps)) == len(snaps) and not set(snaps) & {w.state_slot for w in plan.work}
        for w in plan.work:
            assert w.state_slot and 0 not in w.page_ids and len(set(w.page_ids)) == len(w.page_ids)
            out += self.run_work(w, fed_before)
        return StepResult(plan.step_id, tuple(out))

    def run_work(self, w, fed_before: dict[int, int]) -> list[SampledToken]:
        """One SeqWork of the fake model; returns its draws."""
        ps, sid, pre, end = self.ps, w.seq_id, w.prefix_len, w.prefix_len + w.num_new
        assert self.pages_fit(w, end)
        truth = tuple(self.truth(sid, end))
        # the slot holds exactly this prefix (zeroed, its own, or a cached copy)
        assert self.slot.get(w.state_slot) == truth[:pre]
        for p in range(end):  # read back the prefix (own or cached), write the rest
            assert p >= pre or self.kv[w.page_ids[p // ps], p % ps] == truth[:p + 1]
            if p >= pre:
                self.kv[w.page_ids[p // ps], p % ps] = truth[:p + 1]
        fed = (fed_before[sid],) if w.future_token else w.token_ids
        assert fed == truth[pre:end]
        self.slot[w.state_slot] = truth
        if w.snapshot_slot is not None:  # aligned in prefill, as the chunked kernel needs
            at = w.snapshot_len
            assert pre < at <= end and ((at - pre) % self.s.cache.chunk == 0 or at == end)
            self.slot[w.snapshot_slot] = truth[:at]
        if w.sample is None:
            return []
        return [SampledToken(sid, sample_token(sid, w.sample.params, w.sample.counter))]

    def pages_fit(self, w, end: int) -> bool:
        """A SeqWork's pages are those of its tokens."""
        return len(w.page_ids) == -(-end // self.ps)

    def note(self, outputs) -> None:
        for o in outputs:
            sid = int(o.request_id[1:])  # request ids are f"r{seq_id}"
            # one finish per request; no token only for an abort or a pool-outgrown finish
            assert sid not in self.ended and (o.token_id is not None
                                              or o.finish_reason in (LENGTH, ABORT))
            self.said[sid] += [] if o.token_id is None else [o.token_id]
            if o.finish_reason is not None:
                self.ended[sid] = o.finish_reason

    def drain(self) -> None:
        """Liveness (see `drain_keep_cache`); then, the prefix cache flushed, all is free."""
        self.drain_keep_cache()
        s = self.s
        assert not s.seqs and not s.running and not s.waiting
        tree = s.cache.stats()
        assert tree.get("protected_pages", 0) == tree.get("protected_slots", 0) == 0
        s.cache.flush()
        assert s.pages.num_free == s.pages.num_total and s.slots.num_free == s.slots.num_total
        assert sorted([*self.released, *s._released]) == sorted(self.refs)  # released once

    def drain_keep_cache(self) -> None:
        """Liveness: never 1000 steps without a token or finish."""
        idle, progress = 0, lambda: sum(map(len, self.said.values())) + len(self.ended)
        while self.flight is not None or self.s.has_work:
            before = progress()
            self.step()
            self.check()
            idle = 0 if progress() > before else idle + 1
            assert idle < 1000, "livelock: 1000 steps without a token or a finish"

    def holds_its_pages(self, q: Sequence) -> bool:
        """Between steps a sequence holds the pages of its computed tokens."""
        return len(q.page_ids) == -(-q.num_computed // self.ps)

    def check(self) -> None:
        s = self.s
        s.pages.check_integrity(), s.slots.check_integrity(), s.cache.check_integrity()
        live = list(s.seqs.values())
        nodes = [n for n in s.cache.tree._nodes()] if s.cache.tree else []
        cached = {p for n in nodes for p in n.page_ids}
        pages = [p for q in live for p in q.page_ids[q.cached_len // self.ps:]]
        pages += [p for n in nodes for p in n.page_ids]
        slots = [x for q in live for x in (q.state_slot, *q.track_slots) if x is not None]
        slots += [n.state_slot for n in nodes if n.state_slot is not None]
        assert all(set(q.page_ids[:q.cached_len // self.ps]) <= cached for q in live)
        for held, alloc in ((pages, s.pages), (slots, s.slots)):
            assert 0 not in held and len(set(held)) == len(held)
            assert len(held) == alloc.num_total - alloc.num_free
        assert all(self.holds_its_pages(q) for q in live)
        assert all(w.seq_id in s.seqs for w in (self.flight[0].work if self.flight else ()))
        run, wait = {q.seq_id for q in s.running}, {q.seq_id for q in s.waiting}
        assert not run & wait and len(run) == len(s.running) <= self.lim.max_running_requests
        assert all(q.status is Status.RUNNING and q.state_slot is not None for q in s.running)
        assert all(q.status is Status.WAITING and q.state_slot is None and not q.page_ids
                   and q.num_computed == 0 for q in s.waiting)
        for sid, q in ((i, q) for i, q in self.refs.items() if i not in self.done):
            out, sp = q.output_ids, q.request.sampling
            assert q.is_finished == (sid not in run | wait)
            assert sid in s.seqs or (q.is_finished and not q.page_ids and q.state_slot is None)
            assert len(out) <= sp.max_new_tokens and self.said[sid] == out
            assert out == self.truth(sid, q.num_tokens)[q.prompt_len:]
            stops = [i for i, t in enumerate(out) if is_stop(t, sp)]  # only a STOP's last token
            assert stops == ([len(out) - 1] if q.finish_reason is STOP else [])
            assert q.finish_reason is not STOP or len(out) - 1 >= sp.min_new_tokens
            assert not q.is_finished or self.ended.get(sid) == q.finish_reason, "unannounced"
            # a LENGTH short of max_new_tokens only when the sequence outgrew the whole pool
            if q.finish_reason is LENGTH and len(out) < sp.max_new_tokens:
                assert q.num_tokens + 1 > s.pages.num_total * self.ps
            if q.is_finished and sid not in s.seqs:
                self.done.add(sid)


CONFIG = dict(num_pages=st.integers(3, 12) | st.integers(3, 40), page_size=st.integers(1, 4),
              num_slots=st.integers(2, 6), chunk=st.one_of(st.none(), st.integers(1, 8)),
              max_prefill=st.integers(1, 16), running=st.integers(1, 5))


@st.composite
def requests(draw, capacity: int):
    """(prompt, params); most fit a pool of `capacity` tokens alone, some outgrow it."""
    new = draw(st.integers(1, min(8, capacity - 1)) | st.integers(1, 8))
    size = draw(st.integers(1, min(20, max(1, capacity - new))))
    return draw(st.lists(st.integers(0, VOCAB - 1), min_size=size, max_size=size)), SP(
        max_new_tokens=new, min_new_tokens=draw(st.integers(0, new)),
        stop_token_ids=tuple(draw(st.sets(st.integers(0, VOCAB - 1), max_size=3))),
        ignore_eos=draw(st.booleans()))


class NormalMachine(RuleBasedStateMachine):
    overlap = False

    @initialize(**CONFIG)
    def setup(self, **cfg):
        self.h = Harness(self.overlap, **cfg)

    @rule(data=st.data(), n=st.integers(1, 3))
    def add(self, data, n):
        for _ in range(n):
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
        self.h.drain_keep_cache()

    @invariant()
    def invariants(self):
        self.h.check()

    def teardown(self):  # liveness: with no new requests, everything finishes and is freed
        self.h.drain()


class OverlapMachine(NormalMachine):
    overlap = True


TestNormalMachine, TestOverlapMachine = NormalMachine.TestCase, OverlapMachine.TestCase
TestNormalMachine.settings = TestOverlapMachine.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None)


def run_all(overlap: bool, cfg: dict, reqs) -> dict:
    h = Harness(overlap, **cfg)
    for prompt, params in reqs:
        h.add(prompt, params)
    h.drain()
    return {sid: (q.output_ids, q.finish_reason, h.ended.get(sid)) for sid, q in h.refs.items()}


@st.composite
def workloads(draw):
    cfg = draw(st.fixed_dictionaries({**CONFIG, "num_pages": st.integers(3, 16)}))
    reqs = draw(st.lists(requests((cfg["num_pages"] - 1) * cfg["page_size"]),
                         min_size=1, max_size=6))
    if draw(st.booleans()):  # roomy: all fit at once, so only queueing / chunking / slots
        need = sum(-(-(len(p) + sp.max_new_tokens) // cfg["page_size"]) for p, sp in reqs)
        cfg["num_pages"] = max(cfg["num_pages"], need + 1)
    return cfg, reqs  # else preemption, and requests outgrowing the pool


LONE = dict(num_pages=5, page_size=1, num_slots=2, chunk=None, max_prefill=16, running=1)


@settings(max_examples=200, deadline=None)  # the examples: regressions for bugs found here
@example((LONE, [([1, 2, 3], SP(max_new_tokens=2))]))  # overlap lost the last token
@example(({**LONE, "num_pages": 4}, [([1, 2, 3], SP(max_new_tokens=8))]))  # outgrows: leak
@example((dict(num_pages=7, page_size=1, num_slots=3, chunk=None, max_prefill=3, running=2),
          [([0], SP(max_new_tokens=1)), ([0] * 4, SP(max_new_tokens=1))]))  # pages in flight
@example((dict(num_pages=6, page_size=3, num_slots=6, chunk=5, max_prefill=7, running=3),
          [([0] * 2, SP(max_new_tokens=5)), ([0] * 9, SP(max_new_tokens=3)),
           ([0], SP(max_new_tokens=8))]))  # preempted with a token in flight: it must be dropped
@given(workloads())
def test_overlap_matches_normal(work):
    assert run_all(False, *work) == run_all(True, *work)


def test_stop_id_below_min_new_tokens_does_not_finish():
    h = Harness(False, **LONE)
    h.add([1], SP(max_new_tokens=4, min_new_tokens=2, stop_token_ids=(5,)))
    for tok in (3, 5):  # 5 at counter 1 < min_new_tokens: the sampler never draws it there
        plan = h.s.schedule()
        out = h.s.update(plan, StepResult(plan.step_id, (SampledToken(0, tok),)))
    assert out[0].finish_reason is None  # the stop id sits at index 1 < min_new_tokens


def test_overlap_progresses_when_partial_prefills_fill_the_pool():
    cfg = dict(num_pages=8, page_size=1, num_slots=4, chunk=2, max_prefill=3, running=3)
    reqs = [([0] * 6, SP(max_new_tokens=1)), ([0] * 5, SP(max_new_tokens=1)),
            ([0], SP(max_new_tokens=2))]  # hold 4 + 2 + 1 of 7 pages; the prompts need 2 more
    want = {0: ([0], LENGTH, LENGTH), 1: ([5], LENGTH, LENGTH), 2: ([10, 4], LENGTH, LENGTH)}
    assert run_all(False, cfg, reqs) == want
    assert run_all(True, cfg, reqs) == want  # once looped forever (retract, readmit, repeat)


def test_scheduler_imports_no_torch():
    code = ("import sys, qnext.worker.sched.scheduler, qnext.worker.sched.plan; "
            "assert 'torch' not in sys.modules, 'qnext.worker.sched imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
