"""What crosses from the scheduler to the workers and back: `StepPlan` and `StepResult`, plain
ints and floats only (rank 0 ships plans to the other TP ranks). Pure Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from qnext.worker.sched.request import SamplingParams


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """How to pick the next token of one sequence. `counter` is the index of the output token
    being sampled: with `seed` it fixes the random draw, whatever the batch looks like."""

    params: SamplingParams
    seed: int
    counter: int


@dataclass(frozen=True, slots=True)
class SeqWork:
    """One sequence's part of a step: feed `token_ids` at positions prefix_len.. .

    With `future_token`, the single input token is the one sampled for this sequence by the
    previous step, still on the device (overlap loop); `token_ids` is then empty.
    `snapshot_slot`, if set, must hold the recurrent state after the sequence's first
    `snapshot_len` tokens once the step has run (prefix_len < snapshot_len <= prefix_len +
    num_new; extra_buffer prefix caching).
    `sample` is set when the chunk ends at the sequence's last token, i.e. a token is drawn.
    `prompt_ids` carries the full prompt (and earlier outputs, after a preemption) on the
    sequence's first chunk when its sampling uses penalties, so the worker can count them.
    Speculative decoding (`sched/spec.py`): `spec_draft` runs the draft head over this prompt
    chunk too (and drafts after the sampled token when the chunk ends the prompt);
    `spec_verify` makes a decode a verify of `token_ids[0]` (the root) followed by the drafts
    the worker holds for the sequence, so it may return several tokens; its snapshot (at most
    one, anywhere in the n positions a verify may keep) is written only if the kept tokens
    reach it. Both need `page_ids` to cover the draft positions too (`sched/spec.py`).
    `after_verify` (overlap loop): the previous step, still in flight, verifies this sequence
    too; this verify's root is that one's bonus token and its prefix (and sampling counter)
    are `prefix_len` (`sample.counter`) plus that verify's accepted count, known on the device
    only (so is whether the kept tokens reach its snapshot).
    Pages travel as deltas: `page_ids` are the sequence's pages from index `pages_from` on;
    the ones before are those its earlier SeqWorks gave (`PageLists` rebuilds the full list).
    A plan therefore costs O(new pages), not O(context), to build, ship and read; pages_from
    is 0 whenever the scheduler rewrote the list (admission, cache dedup, preemption).
    """

    seq_id: int
    token_ids: tuple[int, ...]
    prefix_len: int
    state_slot: int
    page_ids: tuple[int, ...]
    sample: SampleSpec | None = None
    future_token: bool = False
    history: tuple[int, ...] | None = None
    num_prompt: int = 0
    snapshot_slot: int | None = None
    snapshot_len: int = 0
    spec_draft: bool = False
    spec_verify: bool = False
    pages_from: int = 0
    after_verify: bool = False

    @property
    def num_new(self) -> int:
        return 1 if self.future_token else len(self.token_ids)


@dataclass(frozen=True, slots=True)
class StepPlan:
    step_id: int
    work: tuple[SeqWork, ...]
    zero_slots: tuple[int, ...] = ()  # fresh state slots to zero before the forward
    # (src, dst) state-slot copies, in order, after zeroing and before the forward: prefix
    # cache hits (copy-on-write) and chunk-boundary snapshots
    copy_slots: tuple[tuple[int, int], ...] = ()
    released: tuple[int, ...] = ()  # seq ids whose worker-side state can be dropped

    @property
    def num_tokens(self) -> int:
        return sum(w.num_new for w in self.work)


@dataclass(frozen=True, slots=True)
class SampledToken:
    seq_id: int
    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class StepResult:
    step_id: int
    # one per SeqWork with `sample`, in plan order; a spec_verify work gives its accepted
    # drafts then the bonus token, in order
    tokens: tuple[SampledToken, ...]


class PageView(Sequence):
    """The first `length` ids of a live page list, read in place: what `PageLists.expand`
    hands out instead of copying O(context) ids a step. Valid until the next plan of the
    same sequence is expanded (which may shorten the list); a worker reads a step's pages
    only while it launches that step."""

    __slots__ = ("_pages", "_length")
    __hash__ = None  # like the list it shows

    def __init__(self, pages: list[int], length: int) -> None:
        self._pages, self._length = pages, length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._pages[slice(*index.indices(self._length))]
        if not -self._length <= index < self._length:
            raise IndexError(f"page {index} of {self._length}")
        return self._pages[index % self._length]

    def __eq__(self, other) -> bool:
        return isinstance(other, (list, tuple, PageView)) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"PageView({list(self)})"


class PageLists:
    """A worker's copy of every sequence's page list, kept from the plans' deltas: `expand`
    turns a plan's SeqWorks into ones with full `page_ids` (`PageView`s, pages_from 0), in
    plan order, and forgets the plan's released sequences."""

    def __init__(self) -> None:
        self._lists: dict[int, list[int]] = {}

    def expand(self, plan: StepPlan) -> StepPlan:
        work = tuple(self._full(w) for w in plan.work)
        for seq_id in plan.released:
            self._lists.pop(seq_id, None)
        return replace(plan, work=work)

    def _full(self, w: SeqWork) -> SeqWork:
        if w.pages_from == 0:
            pages = self._lists[w.seq_id] = list(w.page_ids)
            return replace(w, page_ids=PageView(pages, len(pages)))
        pages = self._lists.get(w.seq_id)
        if pages is None or len(pages) < w.pages_from:
            raise RuntimeError(f"sequence {w.seq_id}: a page delta from {w.pages_from} without "
                               f"the pages before it (plans out of order?)")
        del pages[w.pages_from:]
        pages.extend(w.page_ids)
        return replace(w, page_ids=PageView(pages, len(pages)), pages_from=0)
