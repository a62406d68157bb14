"""The engine facade: builds the model runner, plans memory, owns the scheduler and the step
loop. Synchronous: `add`, `abort`, `step() -> outputs`, `stats()`, and the offline
`generate()`. Knows nothing of asyncio or gRPC; raises `RequestRejected` for bad requests.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import structlog

from qnext.kernels.compile_log import log_compiles_from_now
from qnext.worker.config import Config
from qnext.worker.engine.loop import NormalLoop, OverlapLoop
from qnext.worker.engine.reconfigure import apply, new_config, plan_for
from qnext.worker.engine.tp import start_tp
from qnext.worker.runtime.model_runner import ModelRunner
from qnext.worker.runtime.worker import PlanExecutor
from qnext.worker.sched.cache import PageAllocator, StateSlotAllocator
from qnext.worker.sched.memory import MemoryPlan, slots_per_request
from qnext.worker.sched.request import (
    FinishReason,
    QueueFull,
    Request,
    RequestRejected,
    SamplingParams,
    Sequence,
)
from qnext.worker.sched.scheduler import RequestOutput, Scheduler, SchedulerLimits

log = structlog.get_logger()


@dataclass
class GenerationOutput:
    """The whole result of one request of `Engine.generate`."""

    request_id: str
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache


def _seed_for(base: int, n: int) -> int:
    """A per-request seed drawn deterministically from the engine seed and arrival order."""
    return (base * 1_000_003 + n * 7_919 + 12_345) % (2**31 - 1)


class Engine:
    def __init__(self, cfg: Config) -> None:
        if cfg.parallel.tp_size > 1:  # rank 0 of a process group it spawns
            self.executor = start_tp(cfg)
        elif cfg.spec.enabled:
            from qnext.worker.runtime.spec_worker import SpecExecutor

            self.executor = SpecExecutor(ModelRunner(cfg), cfg.model.eos_token_ids)
        else:
            self.executor = PlanExecutor(ModelRunner(cfg), cfg.model.eos_token_ids)
        self.runner = self.executor.runner
        strategy = cfg.cache.radix_strategy
        overlap = self.overlap_for(cfg, explain=True)
        self.install(cfg, self.executor.plan_memory(cfg, strategy, overlap))
        self._ids: dict[str, int] = {}
        self._requests: dict[int, str] = {}
        self._arrivals = itertools.count()
        self._counters = {"requests": 0, "finished": 0, "tokens": 0, "steps": 0}
        if self.runner.device.type == "cuda" and not cfg.sched.skip_server_warmup:
            self._warm_up()
        log.info("engine_ready", overlap=isinstance(self.loop, OverlapLoop),
                 radix_strategy=self.strategy, **self.memory.describe())

    def _warm_up(self) -> None:
        """Triton's compilations of the usual shape classes, before any request waits."""
        start = time.monotonic()
        forwards = self.executor.warm_up(self.cfg.sched.max_prefill_tokens)
        log.info("warmup", forwards=forwards, seconds=round(time.monotonic() - start, 1))
        log_compiles_from_now(log)  # a later compile is a shape class the warm-up missed

    @staticmethod
    def overlap_for(cfg: Config, explain: bool = False) -> bool:
        """Draft trees run the normal loop (their steps wait for the kept paths,
        runtime/spec_worker.py); everything else may overlap.

        Unlike SGLang, whose no_buffer mode turns overlap scheduling off, no_buffer keeps the
        overlap loop here: its chunk-boundary copies are queued in the plan after the chunk
        they snapshot, on the same stream, and a finished sequence gives its working slot to
        the tree only once no step in flight references it (`Scheduler._collect_finished`),
        at `num_computed` (the tokens its launched steps fed, one more than the normal loop
        when the extra step ran). The scheduler property tests check both loops."""
        if cfg.sched.disable_overlap_schedule:
            return False
        if cfg.spec.enabled and cfg.spec.topk > 1:
            if explain:
                log.info("overlap_schedule_disabled", reason="speculative decoding with draft "
                         "trees (--speculative-eagle-topk > 1) runs the normal loop")
            return False
        return True

    def install(self, cfg: Config, plan: MemoryPlan, carry: Scheduler | None = None) -> None:
        """Allocate pools for `plan` and build the scheduler and loop for `cfg`; `carry`: a
        quiescent scheduler (nothing running or in flight) whose queue moves over."""
        self.cfg, self.strategy, self.memory = cfg, cfg.cache.radix_strategy, plan
        overlap = self.overlap_for(cfg)
        self.executor.install_pools(cfg, plan)
        self.scheduler = Scheduler(self._limits(overlap), PageAllocator(plan.num_pages),
                                   StateSlotAllocator(plan.num_state_slots),
                                   cfg.model.eos_token_ids)
        if carry is not None:
            self.scheduler.adopt(carry)
        self.loop = (OverlapLoop if overlap else NormalLoop)(self.scheduler, self.executor)

    def reconfigure(self, strategy: str | None = None, ratio: float | None = None,
                    num_slots: int | None = None,
                    dry_run: bool = False) -> tuple[MemoryPlan, list[RequestOutput]]:
        """Switch the prefix-cache strategy and/or the state budget (see `reconfigure`);
        returns the new plan and outputs to deliver. Raises ValueError on a bad value or an
        impossible plan, ReconfigureConflict when it cannot hold the running requests."""
        cfg = new_config(self.cfg, strategy, ratio, num_slots)
        if dry_run:
            return plan_for(self, cfg), []
        plan, outputs = apply(self, cfg)
        self._count(outputs)
        return plan, outputs

    def _limits(self, overlap: bool) -> SchedulerLimits:
        sched, cache = self.cfg.sched, self.cfg.cache
        return SchedulerLimits(
            max_running_requests=self.memory.max_running_requests,
            max_prefill_tokens=sched.max_prefill_tokens, chunk_size=sched.chunked_prefill_size,
            page_size=cache.page_size,
            max_context=self.context_length, strategy=self.strategy,
            track_interval=cache.mamba_track_interval, num_track_slots=2 if overlap else 1,
            admission_slots=slots_per_request(self.strategy, overlap),
            spec_tokens=self.cfg.spec.draft_tokens if self.cfg.spec.enabled else 0,
            spec_scratch=self.cfg.spec.draft_scratch if self.cfg.spec.enabled else 0)

    @property
    def context_length(self) -> int:
        return self.cfg.sched.context_length or self.cfg.model.max_position_embeddings

    # -- requests -------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        """Queue a request; RequestRejected (naming the field) if it can never run, QueueFull
        when --max-queued-requests requests already wait (preempted ones included)."""
        self._validate(request)
        bound = self.cfg.sched.max_queued_requests
        if bound is not None and len(self.scheduler.waiting) >= bound:
            raise QueueFull(f"{bound} requests are already waiting (--max-queued-requests)")
        n = next(self._arrivals)
        seed = request.sampling.seed
        seq = Sequence(seq_id=n, request=request,
                       seed=_seed_for(self.cfg.sched.random_seed, n) if seed is None else seed,
                       arrival=n)
        self._ids[request.request_id], self._requests[n] = n, request.request_id
        self._counters["requests"] += 1
        self.scheduler.add(seq)

    def _validate(self, request: Request) -> None:
        prompt, vocab = request.prompt_ids, self.cfg.model.vocab_size
        if request.request_id in self._ids:
            raise RequestRejected(f"duplicate request_id {request.request_id!r}")
        if not prompt:
            raise RequestRejected("prompt is empty")
        if not all(0 <= t < vocab for t in prompt):
            raise RequestRejected(f"prompt token ids must be in [0, {vocab})")
        if len(prompt) >= self.context_length:
            raise RequestRejected(f"prompt of {len(prompt)} tokens does not fit the context "
                                  f"length {self.context_length}")
        if len(prompt) + 1 > self.memory.max_total_tokens:
            raise RequestRejected(f"prompt of {len(prompt)} tokens exceeds the KV pool "
                                  f"({self.memory.max_total_tokens} tokens)")
        request.sampling.validate(vocab)

    def abort(self, request_id: str) -> bool:
        """Finish a request with ABORT; False if unknown or already finished."""
        seq_id = self._ids.get(request_id)
        return seq_id is not None and self.scheduler.abort(seq_id) is not None

    # -- stepping -------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return not self.loop.idle

    def step(self) -> list[RequestOutput]:
        """Run one step; returns the tokens it produced and the requests it finished."""
        outputs = self.loop.step()
        self._counters["steps"] += 1
        self._count(outputs)
        return outputs

    def _count(self, outputs: list[RequestOutput]) -> None:
        self._counters["tokens"] += sum(o.token_id is not None for o in outputs)
        self._counters["finished"] += sum(o.finish_reason is not None for o in outputs)
        self._forget_finished()

    def _forget_finished(self) -> None:
        for seq_id in [s for s in self._requests if s not in self.scheduler.seqs]:
            del self._ids[self._requests.pop(seq_id)]

    def stats(self) -> dict:
        return {
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "num_free_pages": self.scheduler.pages.num_free,
            "num_free_state_slots": self.scheduler.slots.num_free,
            "num_preemptions": self.scheduler.num_preemptions,
            **{f"num_{k}": v for k, v in self._counters.items()},
            "memory": self.memory.describe(),
            "prefix_cache": self.scheduler.cache.stats(),
            **({"spec": self.executor.spec_stats()} if hasattr(self.executor, "spec_stats")
               else {}),
        }

    def close(self) -> None:
        """Stop the other TP ranks (a no-op at TP 1)."""
        self.executor.close()

    def pool_usage(self) -> dict[str, dict[str, int]]:
        """Pages and state slots: total / used (by running requests) / cached (by the prefix
        cache) / evictable (cached, unused) / free. Cheap: counters only."""
        tree = self.scheduler.cache.stats()
        out = {}
        for name, alloc, unit in (("pages", self.scheduler.pages, "pages"),
                                  ("state_slots", self.scheduler.slots, "slots")):
            cached = tree.get(f"num_cached_{unit}", 0)
            free = alloc.num_free
            out[name] = {"total": alloc.num_total, "used": alloc.num_total - free - cached,
                         "cached": cached, "evictable": tree.get(f"evictable_{unit}", 0),
                         "free": free}
        return out

    def flush_cache(self) -> tuple[int, int]:
        """Drop every cached prefix no running request uses (running requests lock theirs;
        all of them when idle); returns the pages and state slots freed."""
        return self.scheduler.cache.flush()

    def check_integrity(self) -> bool:
        """Run the from-scratch checks of the page and slot allocators and of the prefix cache;
        when idle (nothing running, waiting or in flight) also check that no cached page or
        slot is locked and that every page and slot not free is the cache's. Raises
        IntegrityError on the first violation; returns whether the idle checks ran. Walks
        everything: call it at a step boundary, not per step."""
        from qnext.worker.sched.cache import IntegrityError

        sched = self.scheduler
        sched.pages.check_integrity()
        sched.slots.check_integrity()
        sched.cache.check_integrity()
        if self.has_work or sched.seqs:
            return False
        tree = sched.cache.stats()
        for unit, pool in self.pool_usage().items():
            if pool["used"]:  # free + cached must be everything
                raise IntegrityError(f"idle, but {pool['free']} free + {pool['cached']} cached "
                                     f"!= {pool['total']} {unit}")
            if locked := tree.get(f"protected_{unit.removeprefix('state_')}", 0):
                raise IntegrityError(f"idle, but {locked} cached {unit} are locked")
        return True

    # -- offline --------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]],
                 sampling: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool | None = None) -> list[GenerationOutput]:
        """Run prompts (token ids) to completion; results in prompt order."""
        params = sampling if isinstance(sampling, list) else [sampling or SamplingParams()] * \
            len(prompts)
        tag = f"gen-{time.monotonic_ns()}"
        results = {f"{tag}-{i}": GenerationOutput(f"{tag}-{i}", list(p))
                   for i, p in enumerate(prompts)}
        for (rid, res), sp in zip(results.items(), params):
            self.add(Request(rid, tuple(res.prompt_ids), sp))
        self._drain(results, progress if progress is not None else len(prompts) >= 32)
        return list(results.values())

    def _drain(self, results: dict[str, GenerationOutput], progress: bool) -> None:
        from tqdm import tqdm

        bar = tqdm(total=len(results), disable=not progress, desc="generate")
        pending = set(results)
        while pending:
            for out in self.step():
                if out.request_id not in results:
                    continue
                res = results[out.request_id]
                if out.token_id is not None:
                    res.output_ids.append(out.token_id)
                    res.logprobs.append(out.logprob)
                if out.finish_reason is not None:
                    res.finish_reason = out.finish_reason
                    res.cached_tokens = out.cached_tokens or 0
                    pending.discard(out.request_id)
                    bar.update(1)
        bar.close()
        self.settle()

    def settle(self) -> None:
        """With no unfinished request left, retire what is still in flight (a step the overlap
        loop launched for sequences that have since finished), so every page and slot is free."""
        while self.has_work and not self.scheduler.running and not self.scheduler.waiting:
            self.step()
