"""Requests as the engine sees them: `SamplingParams` and `Request` (frozen client input),
`Sequence` (mutable engine-side progress), `SequenceStatus`, `FinishReason`. Pure Python.

Token ids only: text, stop strings and chat templates belong to the front end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

MAX_SEED = 2**63 - 1  # the largest seed (larger uint64 seeds from the API are refused)
MAX_TOP_LOGPROBS = 20


class RequestRejected(ValueError):
    """A request the engine will not run; the message names the offending field."""


class QueueFull(RuntimeError):
    """The waiting queue is at its bound (--max-queued-requests): try again later."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling. temperature 0 means greedy; `top_k=None` means no top-k cut."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def validate(self, vocab_size: int) -> None:
        """Raise RequestRejected naming the first invalid field and its allowed range (the
        message never echoes more than a short prefix of the value)."""
        for name, ok, rule in self._checks():
            if not ok:
                raise RequestRejected(f"invalid sampling field {name}="
                                      f"{_short(getattr(self, name))} (must be {rule})")
        bad = next((t for t in self.stop_token_ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise RequestRejected(f"invalid sampling field stop_token_ids: {_short(bad)} is "
                                  f"outside the vocabulary [0, {vocab_size})")

    def _checks(self) -> tuple[tuple[str, bool, str], ...]:
        """(field, valid, allowed values) per range-checked field; NaN and inf are invalid."""
        def within(value: float, low: float, high: float) -> bool:
            return math.isfinite(value) and low <= value <= high

        return (
            ("temperature", within(self.temperature, 0, math.inf), ">= 0"),
            ("top_k", self.top_k is None or self.top_k >= 1, ">= 1, or unset"),
            ("top_p", within(self.top_p, 0, 1) and self.top_p > 0, "in (0, 1]"),
            ("min_p", within(self.min_p, 0, 1), "in [0, 1]"),
            ("repetition_penalty", within(self.repetition_penalty, 0, math.inf)
             and self.repetition_penalty > 0, "> 0"),
            ("frequency_penalty", within(self.frequency_penalty, -2, 2), "in [-2, 2]"),
            ("presence_penalty", within(self.presence_penalty, -2, 2), "in [-2, 2]"),
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
            ("min_new_tokens", 0 <= self.min_new_tokens <= self.max_new_tokens,
             "in [0, max_new_tokens]"),
            ("seed", self.seed is None or 0 <= self.seed <= MAX_SEED, f"in [0, {MAX_SEED}]"),
            ("top_logprobs", 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
             f"in [0, {MAX_TOP_LOGPROBS}]"),
        )


def _short(value: object, limit: int = 64) -> str:
    """repr(value), cut to `limit` characters: error messages travel in gRPC trailers."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(Enum):
    LENGTH = "length"  # max_new_tokens reached (or the context is full)
    STOP = "stop"  # an EOS or stop token id was produced
    ABORT = "abort"  # aborted by the client or the engine


@dataclass(slots=True)
class Sequence:
    """Engine-side progress of one request. Owned by the scheduler.

    `num_computed` counts tokens whose K/V and recurrent state are in the caches; the tokens
    still to feed are `all_ids[num_computed:]` (the prompt while prefilling, then the last
    sampled token). `seed` is the resolved sampling seed (the request's or one drawn for it).
    """

    seq_id: int
    request: Request
    seed: int
    status: SequenceStatus = SequenceStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    state_slot: int | None = None
    page_ids: list[int] = field(default_factory=list)
    pages_sent: int = 0  # leading page_ids the workers hold (plans send the rest)
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    arrival: int = 0  # order of arrival, for first-come-first-served
    fresh: bool = True  # admitted, no chunk planned yet (the next chunk registers penalties)
    arrived_at: float = 0.0  # time.monotonic() when queued, and when first admitted
    admitted_at: float | None = None
    # prefix cache (see sched/prefix.py): the first `cached_len` tokens use the tree's pages,
    # protected by a lock on `cache_node`; `num_cached_tokens` were reused at admission
    cached_len: int = 0
    cache_node: object | None = None
    num_cached_tokens: int = 0
    # extra_buffer tracking: ping-pong snapshot slots; the newest planned snapshot holds the
    # state after `track_len` tokens in `track_slot`; `branch_len` is a position to snapshot
    track_slots: list[int] = field(default_factory=list)
    track_idx: int = 0
    track_len: int = 0
    track_slot: int | None = None
    branch_len: int = 0
    # speculative decoding (sched/spec.py): the step of the newest planned verify; verifies
    # planned to take the snapshot in `track_slot` and not settled yet, and whether a settled
    # one took it; the accepted count of the newest settled verify
    verify_step: int | None = None
    track_plans: int = 0
    track_reached: bool = False
    last_accepted: int = 0

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + len(self.output_ids)

    @property
    def all_ids(self) -> list[int]:
        return [*self.request.prompt_ids, *self.output_ids]

    @property
    def num_pending(self) -> int:
        """Tokens not yet in the caches."""
        return self.num_tokens - self.num_computed

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
