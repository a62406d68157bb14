"""Memory plan arithmetic: how one rank's free bytes split into recurrent-state slots and KV
pages, following SGLang's `handle_max_mamba_cache` rules. Pure functions and frozen
dataclasses; must not import torch or do I/O.

Reserved ids: page 0 (padding target) and state slot 0 (dummy write target) are real pool
rows, so their bytes are subtracted from `available_bytes` *before* the split. Hence
`kv_pool_bytes + state_pool_bytes <= available_bytes` always holds, and the counts a plan
hands to the allocators (`num_pages`, `num_state_slots`) include the reserved row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from fractions import Fraction

STRATEGIES = ("off", "no_buffer", "extra_buffer")
_MEM_FLAG = "--mem-fraction-static"


class MemoryPlanError(ValueError):
    """The requested memory plan is impossible; the message names the flag(s) to change."""


def state_bytes_per_slot(num_linear_layers: int, conv_channels: int, conv_kernel: int,
                         num_v_heads: int, head_k_dim: int, head_v_dim: int,
                         conv_dtype_bytes: int, ssm_dtype_bytes: int, tp_size: int) -> int:
    """Bytes of one state slot on one rank, over all Gated DeltaNet layers:
    conv [C/tp, K-1] plus recurrent state [Hv/tp, dv, dk] per layer."""
    if conv_channels % tp_size or num_v_heads % tp_size:
        raise ValueError(f"tp_size {tp_size} must divide conv_channels {conv_channels} "
                         f"and num_v_heads {num_v_heads}")
    conv = num_linear_layers * (conv_channels // tp_size) * (conv_kernel - 1) * conv_dtype_bytes
    ssm = (num_linear_layers * (num_v_heads // tp_size) * head_k_dim * head_v_dim
           * ssm_dtype_bytes)
    return conv + ssm


def kv_bytes_per_token(num_full_layers: int, num_kv_heads: int, head_dim: int,
                       dtype_bytes: int, tp_size: int) -> int:
    """Bytes of K and V for one token on one rank over the full-attention layers. KV heads
    are split over ranks, or replicated (one per rank) when tp_size > num_kv_heads."""
    if tp_size <= num_kv_heads:
        if num_kv_heads % tp_size:
            raise ValueError(f"tp_size {tp_size} must divide num_kv_heads {num_kv_heads}")
        local_kv_heads = num_kv_heads // tp_size
    else:
        if tp_size % num_kv_heads:
            raise ValueError(f"num_kv_heads {num_kv_heads} must divide tp_size {tp_size}")
        local_kv_heads = 1
    return 2 * num_full_layers * local_kv_heads * head_dim * dtype_bytes


def slots_per_request(strategy: str, overlap: bool) -> int:
    """State slots one running request may pin: its working slot, plus the prefix cache's
    share ("no_buffer": 3) and ping-pong track buffers ("extra_buffer": +1, +2 with overlap)."""
    if strategy == "off":
        return 1
    if strategy == "no_buffer":
        return 3
    if strategy == "extra_buffer":
        return 5 if overlap else 4
    raise ValueError(f"unknown prefix-cache strategy {strategy!r}; allowed: {STRATEGIES}")


@dataclass(frozen=True)
class MemoryPlan:
    """One rank's pool sizes. `num_pages` and `num_state_slots` include the reserved id 0;
    `max_total_tokens` counts only allocatable pages ((num_pages - 1) * page_size)."""

    num_pages: int
    page_size: int
    num_state_slots: int
    max_running_requests: int
    max_total_tokens: int
    kv_pool_bytes: int
    state_pool_bytes: int
    state_bytes_per_slot: int
    kv_bytes_per_token: int
    spec_state_bytes: int = 0  # speculative verify: per-draft-step states of every request

    def describe(self) -> dict[str, int]:
        """Flat dict for logs and memory stats."""
        return {**asdict(self), "total_pool_bytes": self.kv_pool_bytes + self.state_pool_bytes
                + self.spec_state_bytes}


def reserve_spec_states(plan: MemoryPlan, num_draft_tokens: int) -> MemoryPlan:
    """Turn n = num_draft_tokens state slots per running request into verify buffers (the
    plan was made with n more slots per request, so the rest still serves the strategy):
    a verify keeps the state after every draft step of every running request apart from the
    pool until acceptance is known (runtime/spec_states.py)."""
    spec_slots = plan.max_running_requests * num_draft_tokens
    slots = plan.num_state_slots - spec_slots
    if slots < 2:
        raise MemoryPlanError(f"no state slot is left after {spec_slots} for speculative "
                              f"verify; lower --speculative-num-draft-tokens or raise "
                              f"{_MEM_FLAG}")
    return replace(plan, num_state_slots=slots,
                   state_pool_bytes=slots * plan.state_bytes_per_slot,
                   spec_state_bytes=spec_slots * plan.state_bytes_per_slot)


def plan_memory(*, available_bytes: int, kv_bytes_per_token: int, state_bytes_per_slot: int,
                page_size: int, mamba_full_memory_ratio: float = 0.9,
                max_mamba_cache_size: int | None = None,
                max_running_requests: int | None = None, max_total_tokens: int | None = None,
                slots_per_request: int = 1, min_tokens_per_request: int = 1) -> MemoryPlan:
    """Split `available_bytes` (free memory after weights and the non-static reserve) into
    state slots and KV pages. Slots come from --max-mamba-cache-size if given; else from
    --max-running-requests if there is no prefix cache (slots_per_request == 1); else from
    the ratio r: r/(1+r) of the budget. KV gets the rest, rounded down to whole pages and
    capped by `max_total_tokens`. Raises MemoryPlanError naming the flag(s) to change."""
    _check_inputs(available_bytes, kv_bytes_per_token, state_bytes_per_slot, page_size,
                  mamba_full_memory_ratio, max_mamba_cache_size, max_running_requests,
                  slots_per_request)
    usable = available_bytes - state_bytes_per_slot - page_size * kv_bytes_per_token
    slots = _num_state_slots(usable, state_bytes_per_slot, mamba_full_memory_ratio,
                             max_mamba_cache_size, max_running_requests, slots_per_request)
    tokens = _num_kv_tokens(usable - slots * state_bytes_per_slot, kv_bytes_per_token,
                            page_size, max_total_tokens, min_tokens_per_request)
    num_pages = tokens // page_size + 1
    return MemoryPlan(
        num_pages=num_pages, page_size=page_size, num_state_slots=slots + 1,
        max_running_requests=_max_requests(slots, slots_per_request, max_running_requests),
        max_total_tokens=tokens, kv_pool_bytes=num_pages * page_size * kv_bytes_per_token,
        state_pool_bytes=(slots + 1) * state_bytes_per_slot,
        state_bytes_per_slot=state_bytes_per_slot, kv_bytes_per_token=kv_bytes_per_token)


def _check_inputs(available: int, kv_per_token: int, state_per_slot: int, page_size: int,
                  ratio: float, max_mamba_cache_size: int | None,
                  max_running_requests: int | None, per_request: int) -> None:
    if min(kv_per_token, state_per_slot, page_size, per_request) < 1:
        raise ValueError("kv_bytes_per_token, state_bytes_per_slot, page_size and "
                         "slots_per_request must be positive")
    if available < 1:
        raise MemoryPlanError(f"no memory left for the cache pools ({available} B after "
                              f"weights); raise {_MEM_FLAG}")
    if not ratio > 0:
        raise MemoryPlanError(f"--mamba-full-memory-ratio must be > 0, got {ratio}")
    if max_mamba_cache_size is not None and max_mamba_cache_size < 1:
        raise MemoryPlanError(f"--max-mamba-cache-size must be >= 1, got {max_mamba_cache_size}")
    if max_running_requests is not None and max_running_requests < 1:
        raise MemoryPlanError(f"--max-running-requests must be >= 1, got {max_running_requests}")


def _num_state_slots(usable: int, per_slot: int, ratio: float, max_mamba_cache_size: int | None,
                     max_running_requests: int | None, per_request: int) -> int:
    """Allocatable state slots (slot 0 excluded); `usable` already excludes both reserved ids."""
    if max_mamba_cache_size is not None:
        slots, flag = max_mamba_cache_size, "--max-mamba-cache-size"
    elif per_request == 1 and max_running_requests is not None:
        slots, flag = max_running_requests, "--max-running-requests"
    else:
        r = Fraction(ratio).limit_denominator(10**6)
        slots = max(usable, 0) * r.numerator // ((r.numerator + r.denominator) * per_slot)
        if slots < 1:
            raise MemoryPlanError(
                f"no state slot fits: one needs {per_slot} B, the state budget is {ratio}/(1+"
                f"{ratio}) of {max(usable, 0)} B; raise {_MEM_FLAG} or "
                "--mamba-full-memory-ratio, or set --max-mamba-cache-size")
        return slots
    if slots * per_slot > usable:
        raise MemoryPlanError(
            f"{flag} {slots} needs {slots * per_slot} B of state slots but only "
            f"{max(usable, 0)} B are available; lower {flag} or raise {_MEM_FLAG}")
    return slots


def _num_kv_tokens(kv_bytes: int, per_token: int, page_size: int,
                   max_total_tokens: int | None, min_tokens: int) -> int:
    """Allocatable KV tokens (page 0 excluded), a whole number of pages."""
    fit = kv_bytes // per_token // page_size * page_size
    cap = fit if max_total_tokens is None else max_total_tokens // page_size * page_size
    capped, tokens = cap < fit, min(fit, cap)
    if tokens >= max(min_tokens, 1):
        return tokens
    if capped:
        hint = f"raise --max-total-tokens (page size {page_size})"
    else:
        hint = (f"raise {_MEM_FLAG}, or lower --mamba-full-memory-ratio, "
                "--max-mamba-cache-size or --max-running-requests")
    raise MemoryPlanError(f"the KV pool holds {tokens} tokens, fewer than the "
                          f"{max(min_tokens, 1)} one request needs; {hint}")


def _max_requests(slots: int, per_request: int, user_cap: int | None) -> int:
    """Concurrency cap: slots // slots-per-request, and at most the user's value."""
    num = slots // per_request
    if num < 1:
        raise MemoryPlanError(
            f"{slots} state slots cannot hold one request at {per_request} slots per request; "
            f"raise --max-mamba-cache-size, --mamba-full-memory-ratio or {_MEM_FLAG}")
    return num if user_cap is None else min(num, user_cap)
