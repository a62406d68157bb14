"""Engine test helpers: build a small-pool engine on a tiny checkpoint, random prompts, and
the check that every page and state slot is free again."""

from __future__ import annotations

from pathlib import Path

import torch

from qnext.worker.config import CacheConfig, Config, LoadConfig, ModelConfig, SchedConfig
from qnext.worker.engine import Engine
from qnext.worker.sched.request import Request, SamplingParams


def make_engine(path: Path, **kwargs) -> Engine:
    """An engine on `path` with `engine_config(path, **kwargs)`."""
    return Engine(engine_config(path, **kwargs))


def engine_config(path: Path, *, overlap: bool = False, max_total_tokens: int | None = 4096,
                  chunk: int | None = 16, max_prefill_tokens: int = 48, page_size: int = 1,
                  max_running_requests: int | None = None, seed: int = 0, radix: str = "off",
                  max_mamba_cache_size: int = 64, track_interval: int = 256) -> Config:
    """Small pools (64 MiB stand-in memory, 64 slots), fp32. `radix`: "off" (no prefix cache)
    or a --mamba-scheduler-strategy value."""
    return Config(
        model=ModelConfig.from_dir(path),
        load=LoadConfig(model_path=str(path), dtype="float32"),
        cache=CacheConfig(page_size=page_size, max_total_tokens=max_total_tokens,
                          cpu_memory_bytes=64 << 20, max_mamba_cache_size=max_mamba_cache_size,
                          disable_radix_cache=radix == "off",
                          mamba_scheduler_strategy="auto" if radix == "off" else radix,
                          mamba_track_interval=track_interval),
        sched=SchedConfig(chunked_prefill_size=chunk, max_prefill_tokens=max_prefill_tokens,
                          disable_overlap_schedule=not overlap,
                          max_running_requests=max_running_requests, random_seed=seed))


def random_prompts(n: int, low: int, high: int, vocab: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (n,), generator=gen).tolist()
    return [torch.randint(0, vocab, (k,), generator=gen).tolist() for k in lengths]


def run_with_changes(engine: Engine, prompts, params: SamplingParams,
                     changes=()) -> dict[str, list[int]]:
    """All prompts at once (request ids r0, r1, ...); `changes` [(after_step, kwargs)] are
    `engine.reconfigure` calls made between steps, each while requests run. Returns every
    request's output ids; all must finish."""
    for i, p in enumerate(prompts):
        engine.add(Request(f"r{i}", tuple(p), params))
    out: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    finished, step, todo = set(), 0, list(changes)

    def collect(outputs):
        for o in outputs:
            out[o.request_id] += [] if o.token_id is None else [o.token_id]
            if o.finish_reason is not None:
                finished.add(o.request_id)

    while engine.has_work:
        if todo and step == todo[0][0]:
            assert engine.scheduler.running, "the change should happen under load"
            collect(engine.reconfigure(**todo.pop(0)[1])[1])
        collect(engine.step())
        step += 1
    assert not todo and finished == set(out)
    return out


def assert_pools_at_baseline(engine: Engine) -> None:
    """No sequence holds a page or a slot, and the allocators are consistent: the prefix
    cache holds no lock, and flushing it returns every page and slot."""
    pages, slots = engine.scheduler.pages, engine.scheduler.slots
    pages.check_integrity()
    slots.check_integrity()
    engine.scheduler.cache.check_integrity()
    tree = engine.stats()["prefix_cache"]
    assert tree.get("protected_pages", 0) == 0 and tree.get("protected_slots", 0) == 0
    assert pages.num_free + tree.get("num_cached_pages", 0) == pages.num_total
    assert slots.num_free + tree.get("num_cached_slots", 0) == slots.num_total
    assert not engine.has_work
    engine.flush_cache()
    assert pages.num_free == pages.num_total, "KV pages leaked"
    assert slots.num_free == slots.num_total, "state slots leaked"
    assert not engine.scheduler.seqs and not engine.scheduler.running
