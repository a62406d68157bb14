"""Speculative acceptance: which draft tokens of a verify forward the target keeps, and the bonus
token after them (`accept_drafts` -> `Acceptance`). Pure torch, on the logits' device.

Legend: B = sequences, n = verify tokens per sequence, V = vocabulary size.

Tree index 0 is the ROOT: the token the previous step emitted, fed first so that its logits give
the target's distribution for the first new token. It is always kept and never emitted again,
so `commit_steps` is never "nothing" (`SpecStateBuffers.commit` copies the state after it when
every proposal is rejected). Indices 1..n-1 are the proposals; parents[b][t] in [0, t) (chains:
t - 1). logits[b, t] predict the token after tree token t; a sequence emits num_accepted + 1
tokens. Token k of them (0-based) is drawn with counter `spec.counter + k`, as `Sampler` would.

Two acceptance rules, both keeping the target's distribution exactly:
- draft_probs None (deterministic proposals: greedy draft, top-k trees): the target's own token
  at each node is drawn as `Sampler` draws it (argmax for greedy rows, else the seeded race on
  the tempered, filtered softmax) and a child is kept iff it equals its parent's draw. This is
  min(1, p/q) with a one-hot q, coupled through the draw: the emitted tokens are exactly those
  of non-speculative decoding with the same seeds.
- draft_probs [B, n, V] (sampled proposals): draft_probs[b, t] is the draft's distribution for
  the token after tree token t (indexed like logits), and t's children were drawn from it
  independently. Children are tried in index order: keep x with probability min(1, r(x) / q(x)),
  r starting at the target's distribution; after a rejection r <- normalise(max(0, r - q))
  (SpecInfer's multi-candidate rule; one child: plain speculative sampling). The bonus token is
  drawn from the final r. Greedy rows use a one-hot target, which keeps exactly the argmax.
Penalties and min_new_tokens blocking are NOT applied: they depend on the tokens along each
path, so callers either skip speculation for such requests or process `logits` beforehand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from qnext.worker.runtime.inputs import draft_depths
from qnext.worker.runtime.sampler import filter_probs, hash_uniform
from qnext.worker.runtime.transfer import to_device, to_device_many
from qnext.worker.sched.plan import SampleSpec

_COIN_STREAM = 0x5EC0_ACC3_9E37_79B9  # xor-ed into seeds: coins never reuse the draws' uniforms


class Acceptance(NamedTuple):
    num_accepted: torch.Tensor  # [B] int64: proposals kept after the root, 0..max depth
    path: torch.Tensor  # [B, n] int64: kept tree indices, root (0) first; -1 past num_accepted
    commit_steps: torch.Tensor  # [B] int64: path[b, num_accepted[b]], the state to commit
    token_ids: torch.Tensor  # [B, n] int64: kept proposals then the bonus token; -1 after
    bonus_ids: torch.Tensor  # [B] int64: the target's token after the last kept one


def target_probs(logits: torch.Tensor, specs: Sequence[SampleSpec]) -> torch.Tensor:
    """[R, V] float32: the distribution the sampler draws row r from: tempered softmax after
    top-k / top-p / min-p, or one-hot at the argmax for greedy rows."""
    probs = torch.zeros_like(logits, dtype=torch.float32)
    probs.scatter_(1, logits.argmax(dim=1, keepdim=True), 1.0)
    drawn = [i for i, spec in enumerate(specs) if not spec.params.is_greedy]
    if not drawn:
        return probs
    index = to_device(drawn, logits.device)
    temperature = to_device([specs[i].params.temperature for i in drawn], logits.device,
                            torch.float32)
    tempered = logits.index_select(0, index).float() / temperature[:, None]
    kept = filter_probs(torch.softmax(tempered, dim=1), [specs[i] for i in drawn])
    return probs.index_copy(0, index, kept)


def accept_drafts(tokens: torch.Tensor, logits: torch.Tensor, specs: Sequence[SampleSpec],
                  parents: list[list[int]] | None = None,
                  draft_probs: torch.Tensor | None = None,
                  counter_shift: torch.Tensor | None = None) -> Acceptance:
    """Decide a verify step. tokens [B, n] int64 (column 0: the roots), logits [B, n, V] (the
    vocabulary only, padding columns sliced off), specs[b] for sequence b, parents [B][n] with
    parents[b][0] == -1 (None: chains), draft_probs [B, n, V] or None (module docstring),
    counter_shift [B] int64 on the device: added to each spec's counter (a counter known only
    there, `SeqWork.after_verify`). Nothing waits on the device; the only host work is on
    `parents` and `specs`."""
    num_seqs, n, vocab_size = logits.shape
    depths = _check(tokens, logits, specs, parents, draft_probs)
    device = logits.device
    parent_ids, depth_ids = (t.view(num_seqs, n) for t in to_device_many(
        [[p for row in (parents or [list(range(-1, n - 1))] * num_seqs) for p in row],
         [d for row in depths for d in row]], device))
    if draft_probs is None:
        choices = _target_choices(logits, specs, depths, counter_shift)
        node, kept = _walk_choices(tokens, parent_ids, choices)
        bonus = choices.gather(1, node[:, None]).squeeze(1)
    else:
        probs = target_probs(logits.reshape(num_seqs * n, vocab_size),
                             [s for s in specs for _ in range(n)]).view(num_seqs, n, vocab_size)
        coins = hash_uniform([s.seed ^ _COIN_STREAM for s in specs], [s.counter for s in specs],
                             n, device, counter_shift)
        node, kept, residual = _walk_sampled(tokens, parent_ids, probs, draft_probs.float(),
                                             coins)
        bonus = _draw_bonus(residual, specs, depth_ids.gather(1, node[:, None]).squeeze(1),
                            max(map(max, depths)), counter_shift)
    return _result(tokens, kept, node, bonus)


def _check(tokens: torch.Tensor, logits: torch.Tensor, specs: Sequence[SampleSpec],
           parents: list[list[int]] | None, draft_probs: torch.Tensor | None) -> list[list[int]]:
    """Shapes and tree structure; returns each tree token's depth (root 0)."""
    num_seqs, n, _ = logits.shape
    if tokens.shape != (num_seqs, n) or len(specs) != num_seqs:
        raise ValueError(f"logits {tuple(logits.shape)} need tokens [{num_seqs}, {n}] and "
                         f"{num_seqs} specs, got {tuple(tokens.shape)} and {len(specs)}")
    if draft_probs is not None and draft_probs.shape != logits.shape:
        raise ValueError(f"draft_probs {tuple(draft_probs.shape)} must match logits "
                         f"{tuple(logits.shape)}")
    if parents is None:
        return [list(range(n))] * num_seqs
    if len(parents) != num_seqs or any(len(row) != n for row in parents):
        raise ValueError(f"parents must be [{num_seqs}][{n}]")
    if any(row[0] != -1 or -1 in row[1:] for row in parents):
        raise ValueError("tree index 0 is the root (the last emitted token): parents[b][0] must "
                         "be -1 and every other parent >= 0")
    return [draft_depths(row) for row in parents]


def _target_choices(logits: torch.Tensor, specs: Sequence[SampleSpec],
                    depths: list[list[int]], shift: torch.Tensor | None) -> torch.Tensor:
    """[B, n] int64: the token the sampler would emit after each tree token (argmax, or the
    race with counter + depth)."""
    choices = logits.argmax(dim=2)
    drawn = [b for b, spec in enumerate(specs) if not spec.params.is_greedy]
    if not drawn:
        return choices
    n, vocab_size = logits.shape[1:]
    index = to_device(drawn, logits.device)
    rows = [specs[b] for b in drawn for _ in range(n)]
    probs = target_probs(logits.index_select(0, index).reshape(-1, vocab_size), rows)
    uniform = hash_uniform([s.seed for s in rows],
                           [specs[b].counter + d for b in drawn for d in depths[b]], vocab_size,
                           logits.device, _rows_of(shift, index, n))
    picked = (probs / -torch.log(uniform)).argmax(dim=1).view(len(drawn), n)
    return choices.index_copy(0, index, picked)


def _walk_choices(tokens: torch.Tensor, parents: torch.Tensor, choices: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a child iff it is its parent's choice. Returns the last kept node [B] and the kept
    mask [B, n]. Indices ascend along every path, so one pass in index order walks all trees."""
    node = torch.zeros_like(tokens[:, 0])
    kept = torch.zeros_like(tokens, dtype=torch.bool)
    kept[:, 0] = True
    for t in range(1, tokens.shape[1]):
        wanted = choices.gather(1, node[:, None]).squeeze(1)
        keep = (parents[:, t] == node) & (tokens[:, t] == wanted)
        kept[:, t] = keep
        node = torch.where(keep, t, node)
    return node, kept


def _walk_sampled(tokens: torch.Tensor, parents: torch.Tensor, probs: torch.Tensor,
                  draft: torch.Tensor, coins: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rejection walk: returns the last kept node [B], the kept mask [B, n] and the
    residual [B, V] at the last kept node, the bonus token's distribution."""
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    node = torch.zeros_like(tokens[:, 0])
    kept = torch.zeros_like(tokens, dtype=torch.bool)
    kept[:, 0] = True
    residual = probs[:, 0]
    for t in range(1, tokens.shape[1]):
        token = tokens[:, t, None]
        proposal = draft[rows, parents[:, t]]  # [B, V]: what token t was drawn from
        q_x, r_x = proposal.gather(1, token).squeeze(1), residual.gather(1, token).squeeze(1)
        ratio_ok = coins[:, t] * q_x < r_x  # u < r(x) / q(x) without dividing by q(x)
        active = parents[:, t] == node
        keep, reject = active & ratio_ok, active & ~ratio_ok
        residual = torch.where(keep[:, None], probs[:, t],
                               torch.where(reject[:, None], _minus(residual, proposal), residual))
        kept[:, t] = keep
        node = torch.where(keep, t, node)
    return node, kept, residual


def _minus(residual: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
    """normalise(max(0, r - q)) per row; a row with no mass left (only after a rejection of
    probability zero, i.e. rounding) keeps r."""
    left = (residual - proposal).clamp(min=0.0)
    mass = left.sum(dim=1, keepdim=True)
    return torch.where(mass > 0, left / mass.clamp(min=torch.finfo(left.dtype).tiny), residual)


def _draw_bonus(residual: torch.Tensor, specs: Sequence[SampleSpec], depth: torch.Tensor,
                max_depth: int, shift: torch.Tensor | None) -> torch.Tensor:
    """[B] int64: the seeded race on the residual with counter + depth of the last kept node
    (greedy rows: the argmax, their residual stays one-hot)."""
    bonus = residual.argmax(dim=1)
    drawn = [b for b, spec in enumerate(specs) if not spec.params.is_greedy]
    if not drawn:
        return bonus
    index = to_device(drawn, residual.device)
    uniform = hash_uniform([specs[b].seed for b in drawn for _ in range(max_depth + 1)],
                           [specs[b].counter + d for b in drawn for d in range(max_depth + 1)],
                           residual.shape[1], residual.device,
                           _rows_of(shift, index, max_depth + 1)
                           ).view(len(drawn), max_depth + 1, -1)
    uniform = uniform[torch.arange(len(drawn), device=residual.device), depth[index]]
    picked = (residual.index_select(0, index) / -torch.log(uniform)).argmax(dim=1)
    return bonus.index_copy(0, index, picked)


def _rows_of(shift: torch.Tensor | None, index: torch.Tensor, repeats: int
             ) -> torch.Tensor | None:
    """The counter shifts of sequences `index`, each repeated for its `repeats` draw rows."""
    return None if shift is None else shift.index_select(0, index).repeat_interleave(repeats)


def _result(tokens: torch.Tensor, kept: torch.Tensor, node: torch.Tensor,
            bonus: torch.Tensor) -> Acceptance:
    """Kept mask -> root-first path (ascending indices), emitted tokens padded with -1."""
    n = tokens.shape[1]
    order = torch.arange(n, device=tokens.device).expand_as(tokens)
    path = torch.where(kept, order, n).sort(dim=1).values
    num_accepted = kept.sum(dim=1) - 1
    path = torch.where(path < n, path, -1)
    drafts = tokens.gather(1, path.roll(-1, dims=1).clamp(min=0))  # [b, k] = path[b, k + 1]
    emitted = torch.where(order < num_accepted[:, None], drafts, -1)
    emitted = emitted.scatter(1, num_accepted[:, None], bonus[:, None])
    return Acceptance(num_accepted, path, node, emitted, bonus)
