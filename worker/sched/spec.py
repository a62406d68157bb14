"""Speculative decoding in the scheduler (pure Python): which sequences speculate, the KV pages
their draft and verify positions need, and the bookkeeping once a verify's tokens are known.

With n = draft tokens per verify (root included, k = n - 1 proposals), a decode of a sequence
whose first `c` tokens are cached (its root, the last emitted token, sits at position c):
- the verify writes the target's K/V at positions c .. c + n - 1;
- after a accepted proposals (0 <= a <= k), the draft head re-runs positions c .. c + a and
  drafts k tokens, writing its own K/V up to position c + a + k - 1 <= c + 2k - 1.
So a verify decode needs pages for c + max(n, 2k) tokens; the final prompt chunk (ending at
c tokens, sampling the root) drafts up to position c + k - 2, i.e. c + k - 1 tokens.
Positions past the cached length are scratch: after the step the sequence keeps only the
pages of its c + a + 1 cached tokens (`trim_pages`), the next step reserves again.

A request speculates when acceptance can reproduce its sampler exactly: no penalties (they
depend on the path), no min_new_tokens (it blocks EOS per position), no logprobs (verify does
not compute them); the others decode one token at a time in the same steps.
"""

from __future__ import annotations

from qnext.worker.sched.request import SamplingParams


def speculates(params: SamplingParams, num_draft_tokens: int) -> bool:
    return (num_draft_tokens > 1 and params.repetition_penalty == 1.0
            and params.frequency_penalty == 0.0 and params.presence_penalty == 0.0
            and params.min_new_tokens == 0 and not params.logprobs
            and params.top_logprobs == 0)


def verify_tokens(num_cached: int, num_draft_tokens: int) -> int:
    """Tokens the pages of a verify decode must hold (module docstring)."""
    k = num_draft_tokens - 1
    return num_cached + max(num_draft_tokens, 2 * k)


def draft_tokens_after_prompt(prompt_end: int, num_draft_tokens: int) -> int:
    """Tokens the pages of a final prompt chunk ending at `prompt_end` must hold."""
    return prompt_end + max(0, num_draft_tokens - 2)


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
