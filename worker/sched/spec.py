"""Speculative decoding in the scheduler (pure Python): which sequences speculate, the KV pages
their draft and verify positions need, and the bookkeeping once a verify's tokens are known.

Page size 1. With n = draft tokens per verify (root included) and `scratch` = topk * (steps
- 1) nodes the draft head runs past the last known position (runtime/spec_tree.py), a decode
of a sequence whose first `c` tokens are cached (its root, the last emitted token, sits at
position c) writes the target's K/V at positions c .. c + n - 1 (tree node t at c + t), then
the draft head re-runs the kept positions (inside that range) and writes each draft node's
K/V to one of the last `scratch` pages: pages for c + n + scratch tokens. The final prompt
chunk (ending at c tokens) drafts after position c - 1: c + scratch. Pages past the cached
length are scratch: after the step the sequence keeps only the pages of its c + a + 1 cached
tokens (`trimmed_page_count`), the next step reserves again.

In the overlap loop a sequence's next verify is planned while its last one is in flight
(`SeqWork.after_verify`): not knowing how many proposals that one keeps, the scheduler
reserves for all of them (the next verify's root then sits at most n - 1 positions further),
keeps the scratch pages until no step in flight uses them, and may plan a snapshot anywhere
in the 2n - 1 positions it might keep; the worker takes it if the kept tokens reach it, the
scheduler learns whether they did when both verifies are settled (`last_accepted`). A
verify's snapshot stays pending (`track_plans`: unpublished, no other planned) until the
verifies planned to take it are settled; the next one may plan the same snapshot again, as
at most one of two consecutive verifies can keep its position.

Speculation never preempts or waits for pages: when the extra pages cannot be had (after
evicting cached ones), that step decodes the sequence plainly (after a verify in flight it
sits the step out; its last prompt chunk runs without drafting), and its next verify starts
from stale or empty proposals, which are merely rejected.

A request speculates when acceptance can reproduce its sampler exactly: no penalties (they
depend on the path), no min_new_tokens (it blocks EOS per position), no logprobs (verify does
not compute them); the others decode one token at a time in the same steps.
"""

from __future__ import annotations

from qnext.worker.sched.cache import PageAllocator
from qnext.worker.sched.plan import StepPlan, StepResult
from qnext.worker.sched.request import SamplingParams, Sequence, SequenceStatus


def speculates(params: SamplingParams, num_draft_tokens: int) -> bool:
    return (num_draft_tokens > 1 and params.repetition_penalty == 1.0
            and params.frequency_penalty == 0.0 and params.presence_penalty == 0.0
            and params.min_new_tokens == 0 and not params.logprobs
            and params.top_logprobs == 0)


def verify_tokens(num_cached: int, num_draft_tokens: int, scratch: int) -> int:
    """Tokens (= pages) a verify decode must hold (module docstring)."""
    return num_cached + num_draft_tokens + scratch


def draft_tokens_after_prompt(prompt_end: int, scratch: int) -> int:
    """Tokens (= pages) a final prompt chunk ending at `prompt_end` must hold."""
    return prompt_end + scratch


def accepted_counts(tokens, verify_ids: set[int]) -> dict[int, int]:
    """seq_id -> number of accepted proposals of each verify work in a step's tokens."""
    counts = dict.fromkeys(verify_ids, -1)
    for token in tokens:
        if token.seq_id in counts:
            counts[token.seq_id] += 1
    return counts


def trimmed_page_count(num_cached: int, page_size: int) -> int:
    """Pages a sequence keeps after a speculative step: those of its cached tokens."""
    return -(-num_cached // page_size)


def settle_speculation(plan: StepPlan, result: StepResult, epochs: dict[int, int],
                       seqs: dict[int, Sequence], pages: PageAllocator, page_size: int,
                       busy: set[int] = frozenset()) -> None:
    """After a step with speculative work (`Scheduler.update`, before finished sequences are
    freed): verified sequences advance by their accepted proposals; one that finished inside
    them holds a state past its kept tokens, so it is not cached; a snapshot planned past the
    kept tokens is dropped (one reached is no longer pending); every speculating sequence
    gives back its scratch pages, unless a later step in flight (`busy`) still uses them."""
    counts = accepted_counts(result.tokens, {w.seq_id for w in plan.work if w.spec_verify})
    for work in plan.work:
        seq = seqs.get(work.seq_id)
        if not (work.spec_verify or work.spec_draft) or seq is None or \
                seq.num_preemptions != epochs[work.seq_id]:
            continue
        accepted = counts.get(work.seq_id, 0)
        start = work.prefix_len + (seq.last_accepted if work.after_verify else 0)
        if work.spec_verify and work.snapshot_slot is not None and seq.track_plans:
            _settle_snapshot(seq, start < work.snapshot_len <= min(start + 1 + accepted,
                                                                   seq.num_tokens))
        if work.spec_verify:
            seq.last_accepted = accepted
        if seq.status is SequenceStatus.RUNNING:
            seq.num_computed += max(accepted, 0)
            keep = trimmed_page_count(seq.num_computed, page_size)
            if len(seq.page_ids) > keep and work.seq_id not in busy:
                pages.free(seq.page_ids[keep:])
                del seq.page_ids[keep:]
                seq.pages_sent = min(seq.pages_sent, keep)
        elif seq.status is SequenceStatus.FINISHED and accepted > 0:
            seq.num_computed = seq.cached_len


def _settle_snapshot(seq: Sequence, reached: bool) -> None:
    """One verify planned to take `seq`'s pending snapshot is settled: once the last is, the
    snapshot is kept if one of them took it (their kept tokens never overlap), else dropped."""
    seq.track_reached |= reached
    seq.track_plans -= 1
    if not seq.track_plans:
        if not seq.track_reached:
            seq.track_slot = None
        seq.track_reached = False
