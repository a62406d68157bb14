"""Continuous-batching scheduler (pure Python, no torch): waiting and running queues, chunked
prefill, decode and prefill in one step, preemption by retract-and-requeue, finishing.

Policy per step: (1) every running sequence that is decoding gets its one token — running
requests first; a decode that cannot get a page preempts the newest running sequences (their
pages and slot are freed; they re-enter the front of the waiting queue and recompute);
(2) sequences part-way through their prompt continue with the next chunk; (3) waiting
sequences are admitted first-come-first-served while state slots, pages and the prefill
token budget allow, each starting from its longest cached prefix (`prefix.PrefixCache`;
cached pages and states are evicted before anyone is preempted). With the overlap loop a
step is planned before the previous step's tokens are known: such decodes carry
`future_token` and tokens of a stale plan are dropped.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace

from qnext.worker.sched.cache import OutOfPages, PageAllocator, StateSlotAllocator
from qnext.worker.sched.plan import SampleSpec, SeqWork, StepPlan, StepResult
from qnext.worker.sched.prefix import PrefixCache
from qnext.worker.sched.request import FinishReason, Sequence, SequenceStatus
from qnext.worker.sched.spec import (
    draft_tokens_after_prompt,
    settle_speculation,
    speculates,
    verify_tokens,
)


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    max_running_requests: int
    max_prefill_tokens: int  # prefill tokens of one step, all sequences together
    chunk_size: int | None  # longest prefill chunk of one sequence (None: whole prompts)
    page_size: int
    max_context: int  # tokens of one sequence, prompt included
    strategy: str = "off"  # prefix cache: off, no_buffer or extra_buffer
    track_interval: int = 256  # extra_buffer: decode snapshot every this many tokens
    num_track_slots: int = 1  # extra_buffer: ping-pong snapshot slots per sequence
    admission_slots: int = 1  # free slots (after evicting cached states) to admit one
    snapshot_chunk: int = 64  # extra_buffer: prefill snapshots at multiples of max(this, page)
    spec_tokens: int = 0  # speculative decoding: tokens per verify, root included (0: off)
    spec_scratch: int = 0  # speculative decoding: draft nodes run past the last known position


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """What one step produced for one request: a new token and/or its finish."""

    request_id: str
    token_id: int | None
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    finish_reason: FinishReason | None = None
    cached_tokens: int | None = None  # with the finish: prompt tokens reused from the cache
    queue_time: float | None = None  # with the finish: seconds from arrival to admission


class Scheduler:
    def __init__(self, limits: SchedulerLimits, pages: PageAllocator,
                 slots: StateSlotAllocator, eos_token_ids: tuple[int, ...] = ()) -> None:
        self.cache = PrefixCache(limits.strategy, pages, slots, limits.page_size,
                                 limits.track_interval, limits.num_track_slots,
                                 limits.snapshot_chunk)
        self.limits, self.pages, self.slots = self._aligned(limits), pages, slots
        self.eos_token_ids = frozenset(eos_token_ids)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.seqs: dict[int, Sequence] = {}
        self._step = 0
        self._in_flight: dict[int, dict[int, int]] = {}  # step -> {seq_id: epoch}
        self._released: list[int] = []
        self._events: list[RequestOutput] = []  # finishes decided while planning
        self.num_preemptions = 0

    def _aligned(self, limits: SchedulerLimits) -> SchedulerLimits:
        """extra_buffer: non-final prefill chunks end on snapshot positions, so the chunk and
        step budgets are raised to at least one, and rounded to a multiple of, that chunk."""
        if limits.strategy != "extra_buffer":
            return limits
        align = self.cache.chunk
        chunk = limits.chunk_size and max(align, limits.chunk_size // align * align)
        return replace(limits, chunk_size=chunk,
                       max_prefill_tokens=max(align, limits.max_prefill_tokens))

    # -- requests -------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.arrived_at = time.monotonic()
        self.seqs[seq.seq_id] = seq
        self.waiting.append(seq)

    def abort(self, seq_id: int) -> Sequence | None:
        """Finish a sequence with ABORT wherever it is (announced by `take_events`, like
        every finish); None if unknown or already done."""
        seq = self.seqs.get(seq_id)
        if seq is None or seq.is_finished:
            return None
        if seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self._finish(seq, FinishReason.ABORT, announce=True)
        return seq

    def retract_all(self) -> None:
        """Retract every running sequence (newest first, so the queue keeps arrival order);
        they recompute from their tokens when readmitted. Nothing may be in flight."""
        assert not self._in_flight, "retract_all with a step in flight"
        for seq in sorted(self.running, key=lambda s: s.arrival, reverse=True):
            self._retract(seq)

    def adopt(self, old: Scheduler) -> None:
        """Take over the queue, sequences and counters of a quiescent scheduler (nothing
        running or in flight): the engine rebuilt its pools."""
        assert not old.running and not old._in_flight, "adopt from a busy scheduler"
        self.waiting, self.seqs = old.waiting, old.seqs
        self._step, self.num_preemptions = old._step, old.num_preemptions
        self._released, self._events = old._released, old._events

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._in_flight or self._events)

    # -- planning -------------------------------------------------------------------------
    def schedule(self) -> StepPlan | None:
        """Plan the next step, or None when there is nothing to run."""
        work: list[SeqWork] = []
        zero_slots: list[int] = []
        copies: list[tuple[int, int]] = []
        self._schedule_decodes(work)
        budget = self.limits.max_prefill_tokens
        for seq in [s for s in self.running if self._is_prefilling(s)]:
            budget -= self._schedule_prefill(seq, budget, work, copies)
        while self.waiting and budget > 0 and self._try_admit(budget, zero_slots, copies):
            budget -= self._schedule_prefill(self.running[-1], budget, work, copies)
        if not work:
            return self._unblock() if self.running else None
        self._step += 1
        self._in_flight[self._step] = {w.seq_id: self.seqs[w.seq_id].num_preemptions
                                       for w in work}
        released, self._released = tuple(self._released), []
        return StepPlan(self._step, tuple(work), tuple(zero_slots), released=released,
                        copy_slots=tuple(copies))

    def _unblock(self) -> StepPlan | None:
        """Nothing could run: partial prefills hold all pages. With a step in flight, wait for
        it (it may free pages, and its decodes then preempt normally); otherwise retract the
        newest sequence and retry — a lone one that still cannot run outgrew the pool."""
        if self._in_flight:
            return None
        if len(self.running) == 1:
            self._finish(self.running[0], FinishReason.LENGTH, announce=True)
        else:
            self._retract(max(self.running, key=lambda s: s.arrival))
        return self.schedule()

    def _is_prefilling(self, seq: Sequence) -> bool:
        """Prompt (or, after a preemption, prompt + outputs) not yet fully computed."""
        pending = seq.num_tokens - seq.num_computed
        return pending > 1 or (pending == 1 and not seq.output_ids)

    def _is_decoding(self, seq: Sequence) -> bool:
        return not self._is_prefilling(seq)

    def _schedule_decodes(self, work: list[SeqWork]) -> None:
        for seq in sorted((s for s in self.running if self._is_decoding(s)),
                          key=lambda s: s.arrival):
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted while making room for an older sequence
            future = seq.num_computed == seq.num_tokens  # its last token is still in flight
            after_verify = seq.verify_step in self._in_flight
            # speculation never preempts anyone: short of pages, the sequence decodes plainly
            # (after a verify in flight: it waits one step, its prefix is not known yet)
            most = seq.num_computed + (self.limits.spec_tokens - 1 if after_verify else 0)
            verify = self._speculates(seq) and self._reserve_pages(
                seq, verify_tokens(most, self.limits.spec_tokens, self.limits.spec_scratch),
                preempt=False)
            # NOTE: a decode whose input is still in flight never preempts: its token may
            # finish it; without a page it waits one step and then decodes normally
            if (after_verify and not verify) or not self._reserve_pages(
                    seq, seq.num_computed + 1, preempt=not future):
                continue
            self.cache.publish_snapshot(seq)
            tokens = () if future else (seq.all_ids[seq.num_computed],)
            work.append(self._work(seq, tokens, future=future, decode=True, verify=verify,
                                   after_verify=after_verify))
            seq.num_computed += 1

    def _chunk_size(self, seq: Sequence, budget: int) -> int:
        remaining = seq.num_tokens - seq.num_computed
        size = min(remaining, budget, self.limits.chunk_size or remaining)
        return self.cache.chunk_end(seq, seq.num_computed, size)

    def _schedule_prefill(self, seq: Sequence, budget: int, work: list[SeqWork],
                          copies: list[tuple[int, int]]) -> int:
        """Queue the next prompt chunk of `seq` (at most `budget` tokens); returns its size."""
        size = self._chunk_size(seq, budget)
        end = seq.num_computed + size
        if size <= 0 or not self._reserve_pages(seq, end, preempt=False):
            return 0
        draft = self._speculates(seq) and (end < seq.num_tokens or self._reserve_pages(
            seq, draft_tokens_after_prompt(end, self.limits.spec_scratch), preempt=False))
        self.cache.cache_chunk(seq, copies)
        tokens = tuple(seq.all_ids[seq.num_computed:end])
        work.append(self._work(seq, tokens, draft=draft))
        seq.num_computed += size
        return size

    def _speculates(self, seq: Sequence) -> bool:
        return speculates(seq.request.sampling, self.limits.spec_tokens)

    def _work(self, seq: Sequence, tokens: tuple[int, ...], future: bool = False,
              decode: bool = False, draft: bool = False, verify: bool = False,
              after_verify: bool = False) -> SeqWork:
        start = seq.num_computed
        end = start + max(len(tokens), future)
        ends = future or end == seq.num_tokens
        params = seq.request.sampling
        wants_history = seq.fresh and _uses_penalties(params)
        seq.fresh = False
        # a verify may keep all its n tokens, after a verify in flight from n - 1 positions on
        n = self.limits.spec_tokens
        reach = start + n + (n - 1 if after_verify else 0) if verify else end
        if seq.track_plans:  # a verify in flight may take it: this one may take it instead
            again = after_verify and start < seq.track_len <= reach
            snapshot_slot, snapshot_len = (seq.track_slot, seq.track_len) if again else (None, 0)
        else:
            snapshot_slot, snapshot_len = self.cache.snapshot(seq, start, reach, decode)
        if verify:
            seq.verify_step = self._step + 1
            seq.track_plans += snapshot_slot is not None
        sent, seq.pages_sent = seq.pages_sent, len(seq.page_ids)
        return SeqWork(
            seq_id=seq.seq_id, token_ids=tokens, prefix_len=start,
            state_slot=seq.state_slot, page_ids=tuple(seq.page_ids[sent:]), pages_from=sent,
            sample=SampleSpec(params, seq.seed, len(seq.output_ids) + future) if ends else None,
            future_token=future,
            history=tuple(seq.all_ids) if wants_history else None,
            num_prompt=seq.prompt_len if wants_history else 0,
            snapshot_slot=snapshot_slot, snapshot_len=snapshot_len, spec_draft=draft,
            spec_verify=verify, after_verify=after_verify)

    def _try_admit(self, budget: int, zero_slots: list[int],
                   copies: list[tuple[int, int]]) -> bool:
        """Admit the first waiting sequence from its longest cached prefix if a running
        place, its state slots and the pages of its first chunk can be had (evicting cached
        pages and states, never preempting)."""
        if len(self.running) >= self.limits.max_running_requests:
            return False
        seq = self.waiting[0]
        seq.num_computed = self.cache.match(seq)
        size = self._chunk_size(seq, budget)
        need = self._pages_for(seq.num_computed + size) - len(seq.page_ids)
        # reserve the strategy's share of slots; a matched state is already one of them
        slots = max(self.limits.admission_slots - (seq.cached_len > 0),
                    self.cache.slots_per_admission)
        if size <= 0 or self.pages.num_free + self.cache.evictable_pages < need or \
                not self.cache.ensure_free_slots(slots):
            self.cache.release(seq, cache=False)
            seq.num_computed = 0
            return False
        self.waiting.popleft()
        self.cache.admit(seq, zero_slots, copies)
        if seq.admitted_at is None:
            seq.admitted_at = time.monotonic()
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        return True

    def _pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.limits.page_size)

    def _reserve_pages(self, seq: Sequence, num_tokens: int, preempt: bool = True) -> bool:
        """Grow `seq`'s pages to hold `num_tokens`; preempts newer sequences if allowed."""
        need = self._pages_for(num_tokens) - len(seq.page_ids)
        while need > 0:
            try:
                seq.page_ids += self.pages.allocate(need)
                return True
            except OutOfPages:
                if self.cache.evict_pages(need - self.pages.num_free):
                    continue
                if not preempt or not self._preempt_newest(protect=seq):
                    return False
        return True

    def _preempt_newest(self, protect: Sequence) -> bool:
        """Retract the newest running sequence; False when that is `protect` itself (which is
        then requeued, or finished with LENGTH when it alone cannot fit the KV pool)."""
        victim = max(self.running, key=lambda s: s.arrival)
        if victim is protect and len(self.running) == 1:
            if not self._in_flight:  # else a retiring step may still give pages back
                self._finish(protect, FinishReason.LENGTH, announce=True)
            return False
        self._retract(victim)
        return victim is not protect

    def _retract(self, seq: Sequence) -> None:
        self.cache.release(seq, cache=False)
        self.running.remove(seq)
        seq.status, seq.num_computed = SequenceStatus.WAITING, 0
        seq.verify_step, seq.track_plans, seq.track_reached = None, 0, False
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    # -- results --------------------------------------------------------------------------
    def update(self, plan: StepPlan, result: StepResult) -> list[RequestOutput]:
        """Append the sampled tokens of `plan` and finish sequences; drops stale tokens."""
        epochs = self._in_flight.pop(plan.step_id)
        outputs = []
        for token in result.tokens:
            seq = self.seqs.get(token.seq_id)
            if seq is None or seq.status is not SequenceStatus.RUNNING or \
                    seq.num_preemptions != epochs[token.seq_id]:
                continue  # finished, aborted or preempted after this step was planned
            seq.output_ids.append(token.token_id)
            reason = self._finish_reason(seq, token.token_id)
            if reason is not None:
                self._finish(seq, reason)
            outputs.append(RequestOutput(seq.request.request_id, token.token_id, token.logprob,
                                         token.top_logprobs, reason,
                                         seq.num_cached_tokens if reason else None,
                                         _queue_time(seq) if reason else None))
        busy = self._busy()
        if self.limits.spec_tokens:
            settle_speculation(plan, result, epochs, self.seqs, self.pages,
                               self.limits.page_size, busy)
        self._collect_finished(busy)
        return self.take_events() + outputs

    def _finish_reason(self, seq: Sequence, token_id: int) -> FinishReason | None:
        params = seq.request.sampling
        num_out = len(seq.output_ids)
        if num_out > params.min_new_tokens and (  # a stop may be output #min_new_tokens
                (token_id in self.eos_token_ids and not params.ignore_eos)
                or token_id in params.stop_token_ids):
            return FinishReason.STOP
        if num_out >= params.max_new_tokens or seq.num_tokens >= self.limits.max_context:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason, announce: bool = False) -> None:
        """`announce`: the finish happened outside `update` and is reported by `take_events`."""
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
        if seq in self.running:
            self.running.remove(seq)
        if announce:
            self._events.append(RequestOutput(seq.request.request_id, None, finish_reason=reason,
                                              cached_tokens=seq.num_cached_tokens,
                                              queue_time=_queue_time(seq)))
            self._collect_finished()

    def take_events(self) -> list[RequestOutput]:
        """Finishes decided while planning (e.g. a sequence that outgrew the KV pool)."""
        events, self._events = self._events, []
        return events

    def _busy(self) -> set[int]:
        """The sequences a step still in flight references."""
        return {sid for epochs in self._in_flight.values() for sid in epochs}

    def _collect_finished(self, busy: set[int] | None = None) -> None:
        """Free finished sequences no in-flight step (`busy`, if known) still references."""
        busy = self._busy() if busy is None else busy
        for seq_id in [sid for sid, s in self.seqs.items() if s.is_finished and sid not in busy]:
            self.cache.release(self.seqs.pop(seq_id), cache=True)
            self._released.append(seq_id)


def _queue_time(seq: Sequence) -> float:
    return (seq.admitted_at if seq.admitted_at is not None else time.monotonic()) - seq.arrived_at


def _uses_penalties(params) -> bool:
    return (params.repetition_penalty != 1.0 or params.frequency_penalty != 0.0
            or params.presence_penalty != 0.0)
