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

Speculation never preempts or waits for pages: when the extra pages cannot be had (after
evicting cached ones), that step decodes the sequence plainly (or its last prompt chunk runs
without drafting), and its next verify starts from stale or empty proposals, which are merely
rejected.

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
                       seqs: dict[int, Sequence], pages: PageAllocator, page_size: int) -> None:
    """After a step with speculative work (`Scheduler.update`, before finished sequences are
    freed): verified sequences advance by their accepted proposals; one that finished inside
    them holds a state past its kept tokens, so it is not cached; a snapshot planned past the
    kept tokens is dropped; every speculating sequence gives back its scratch pages."""
    counts = accepted_counts(result.tokens, {w.seq_id for w in plan.work if w.spec_verify})
    for work in plan.work:
        seq = seqs.get(work.seq_id)
        if not (work.spec_verify or work.spec_draft) or seq is None or \
                seq.num_preemptions != epochs[work.seq_id]:
            continue
        accepted = counts.get(work.seq_id, 0)
        if work.snapshot_slot is not None and seq.track_slot == work.snapshot_slot and \
                work.snapshot_len > min(work.prefix_len + 1 + accepted, seq.num_tokens):
            seq.track_slot = None
        if seq.status is SequenceStatus.RUNNING:
            seq.num_computed += max(accepted, 0)
            keep = trimmed_page_count(seq.num_computed, page_size)
            if len(seq.page_ids) > keep:
                pages.free(seq.page_ids[keep:])
                del seq.page_ids[keep:]
                seq.pages_sent = min(seq.pages_sent, keep)
        elif seq.status is SequenceStatus.FINISHED and accepted > 0:
            seq.num_computed = seq.cached_len
