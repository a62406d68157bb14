"""Repetition, frequency and presence penalties: per-sequence token statistics kept on the
device (`PenaltyTracker`) and the batched logit arithmetic (`apply_penalties`).

Legend: N = rows being sampled (one per sequence), M = rows among them that use a penalty,
V = vocabulary size, R = tracker rows (its capacity; it doubles when full).

Semantics (as in HF / SGLang / the OpenAI API):
- repetition_penalty p: for every token seen in the prompt or the outputs, a logit > 0 becomes
  logit / p and a logit <= 0 becomes logit * p (p > 1 discourages repeats).
- frequency_penalty f: logit -= f * (times the token was generated).
- presence_penalty q: logit -= q * (token was generated at least once).
Frequency and presence count generated tokens only, never the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qnext.worker.runtime.transfer import to_device
from qnext.worker.sched.plan import SampleSpec
from qnext.worker.sched.request import SamplingParams


def uses_penalties(params: SamplingParams) -> bool:
    """Whether a request needs a `PenaltyTracker` row (the only ones ever registered)."""
    return (params.repetition_penalty != 1.0 or params.frequency_penalty != 0.0
            or params.presence_penalty != 0.0)


class PenaltyTracker:
    """Token statistics of the penalised sequences, one tracker row per sequence.

    `seen` [R, V] bool: the token occurs in the prompt or the outputs (repetition penalty).
    `counts` [R, V] int32: how often the token was generated (frequency / presence).
    Updates take device tensors of sampled ids and never synchronise with the host.
    """

    def __init__(self, vocab_size: int, device: torch.device | str, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self._rows: dict[int, int] = {}  # seq_id -> tracker row
        self._free: list[int] = list(reversed(range(capacity)))
        self._seen = torch.zeros(capacity, vocab_size, dtype=torch.bool, device=self.device)
        self._counts = torch.zeros(capacity, vocab_size, dtype=torch.int32, device=self.device)
        # a device-side True: `x[rows, ids] = True` would upload the scalar from pageable
        # memory, a host sync every step
        self._true = torch.ones((), dtype=torch.bool, device=self.device)

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def capacity(self) -> int:
        return self._seen.shape[0]

    def register(self, seq_id: int, history: Sequence[int], num_prompt: int) -> None:
        """Start (or restart, after a preemption) tracking `seq_id`. `history` is the prompt
        ids followed by the outputs generated so far; its first `num_prompt` are the prompt."""
        if not 0 <= num_prompt <= len(history):
            raise ValueError(f"num_prompt={num_prompt} outside history of {len(history)}")
        if history and not (0 <= min(history) and max(history) < self.vocab_size):
            raise ValueError(f"history of seq {seq_id} has ids outside [0, {self.vocab_size})")
        row = self._rows[seq_id] if seq_id in self._rows else self._take_row()
        self._rows[seq_id] = row
        ids = to_device(list(history), self.device)
        self._seen[row] = False
        self._seen[row].index_put_((ids,), self._true)
        outputs = ids[num_prompt:]  # (bincount would read its max on the host: a sync)
        self._counts[row].zero_().index_add_(
            0, outputs, torch.ones(outputs.shape, dtype=torch.int32, device=self.device))

    def update(self, seq_ids: Sequence[int], token_ids: torch.Tensor) -> None:
        """Add the newly sampled `token_ids` [N] (row i belongs to seq_ids[i]); sequences that
        are not tracked are skipped."""
        if len(seq_ids) != token_ids.shape[0]:
            raise ValueError(f"{len(seq_ids)} seq ids for {token_ids.shape[0]} tokens")
        picked = [i for i, seq_id in enumerate(seq_ids) if seq_id in self._rows]
        if not picked:
            return
        tokens = token_ids.to(device=self.device, dtype=torch.long)
        if len(picked) != len(seq_ids):
            tokens = tokens[to_device(picked, self.device)]
        rows = to_device([self._rows[seq_ids[i]] for i in picked], self.device)
        self._seen.index_put_((rows, tokens), self._true)
        ones = torch.ones(len(picked), dtype=torch.int32, device=self.device)
        self._counts.index_put_((rows, tokens), ones, accumulate=True)

    def release(self, seq_ids: Sequence[int]) -> None:
        """Forget these sequences (unknown ids are ignored); their rows are reused."""
        for seq_id in seq_ids:
            row = self._rows.pop(seq_id, None)
            if row is not None:
                self._free.append(row)

    def gather(self, seq_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(seen [M, V] bool, counts [M, V] int32) of these sequences, in order."""
        missing = [seq_id for seq_id in seq_ids if seq_id not in self._rows]
        if missing:
            raise KeyError(f"sequences {missing} use penalties but were never registered")
        rows = to_device([self._rows[s] for s in seq_ids], self.device)
        return self._seen[rows], self._counts[rows]

    def _take_row(self) -> int:
        if not self._free:
            self._grow()
        return self._free.pop()

    def _grow(self) -> None:
        old = self.capacity
        seen = torch.zeros(2 * old, self.vocab_size, dtype=torch.bool, device=self.device)
        counts = torch.zeros(2 * old, self.vocab_size, dtype=torch.int32, device=self.device)
        seen[:old] = self._seen
        counts[:old] = self._counts
        self._seen, self._counts = seen, counts
        self._free.extend(reversed(range(old, 2 * old)))


def _penalty_columns(params: list[SamplingParams], like: torch.Tensor) -> torch.Tensor:
    """[3, M, 1]: repetition, frequency and presence penalty of each row."""
    values = [[p.repetition_penalty for p in params], [p.frequency_penalty for p in params],
              [p.presence_penalty for p in params]]
    return to_device(values, like.device, like.dtype).unsqueeze(-1)


def apply_penalties(logits: torch.Tensor, seq_ids: Sequence[int], specs: Sequence[SampleSpec],
                    tracker: PenaltyTracker | None) -> torch.Tensor:
    """Penalised copy of `logits` [N, V] (rows without penalties are untouched; the input is
    returned as is when no row uses any). Raises if a penalised row has no tracker entry."""
    picked = [i for i, spec in enumerate(specs) if uses_penalties(spec.params)]
    if not picked:
        return logits
    if tracker is None:
        raise ValueError("sampling params use penalties but no PenaltyTracker was given")
    seen, counts = tracker.gather([seq_ids[i] for i in picked])
    index = to_device(picked, logits.device)
    rows = logits.index_select(0, index)
    rep, freq, pres = _penalty_columns([specs[i].params for i in picked], rows)
    rows = torch.where(seen, torch.where(rows > 0, rows / rep, rows * rep), rows)
    counts = counts.to(rows.dtype)
    rows = rows - freq * counts - pres * (counts > 0).to(rows.dtype)
    return logits.index_copy(0, index, rows)
