"""Runtime control of an engine: switch the prefix-cache strategy or re-split memory between
state slots and KV pages, at a step boundary, without losing a request.

Procedure: plan the new pools (a dry run stops here); refuse a plan that cannot hold an
unfinished request; retire the step in flight (its tokens are returned for delivery); retract
every running request (they keep their outputs and recompute from their tokens, like a
preemption — greedy outputs are unchanged); drop the prefix cache (its ids belong to the old
pools); free the old pools, allocate the new ones, rebuild the scheduler around the same
queue, and the loop. Requests then continue in arrival order.
"""

from __future__ import annotations

from dataclasses import replace

import structlog

from qnext.worker.config import Config
from qnext.worker.sched.memory import MemoryPlan
from qnext.worker.sched.scheduler import RequestOutput

log = structlog.get_logger()


class ReconfigureConflict(RuntimeError):
    """The new plan cannot hold what the engine is running now."""


def new_config(cfg: Config, strategy: str | None = None, ratio: float | None = None,
               num_slots: int | None = None) -> Config:
    """`cfg` with a new strategy ("off" / "no_buffer" / "extra_buffer") and/or state budget
    (a ratio, or a fixed slot count); ConfigError (a ValueError) on a bad value."""
    cache = cfg.cache
    if strategy is not None:
        cache = replace(cache, disable_radix_cache=strategy == "off",
                        mamba_scheduler_strategy="auto" if strategy == "off" else strategy)
    if ratio is not None:
        cache = replace(cache, mamba_full_memory_ratio=ratio, max_mamba_cache_size=None)
    if num_slots is not None:
        cache = replace(cache, max_mamba_cache_size=num_slots)
    return replace(cfg, cache=cache)


def plan_for(engine, cfg: Config) -> MemoryPlan:
    strategy = cfg.cache.radix_strategy
    return engine.executor.plan_memory(cfg, strategy, engine.overlap_for(cfg))


def apply(engine, cfg: Config) -> tuple[MemoryPlan, list[RequestOutput]]:
    """Switch `engine` to `cfg` now; returns the new plan and the outputs of the retired
    step. Raises ReconfigureConflict (nothing changed) if an unfinished request cannot fit."""
    plan = plan_for(engine, cfg)
    sched = engine.scheduler
    too_long = [s.request.request_id for s in sched.seqs.values()
                if not s.is_finished and s.num_tokens + 1 > plan.max_total_tokens]
    if too_long:
        raise ReconfigureConflict(f"the new plan holds {plan.max_total_tokens} KV tokens, "
                                  f"too few for running request(s) {too_long[:3]}")
    outputs = engine.loop.settle()
    sched.retract_all()
    sched.cache.flush()
    outputs += sched.take_events()
    engine.install(cfg, plan, carry=sched)
    log.info("engine_reconfigured", strategy=engine.strategy, **plan.describe())
    return plan, outputs

