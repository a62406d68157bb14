"""Protobuf <-> engine values: sampling parameters, finish reasons, log-probabilities, memory.
Pure data mapping; no torch. Values are not judged here: the engine's `RequestRejected`
names an invalid field (the gRPC layer turns it into INVALID_ARGUMENT)."""

from __future__ import annotations

from qnext.v1 import admin_pb2, generation_pb2 as gen
from qnext.worker.sched.request import FinishReason, Request, SamplingParams

_FINISH = {FinishReason.STOP: gen.FINISH_REASON_STOP,
           FinishReason.LENGTH: gen.FINISH_REASON_LENGTH,
           FinishReason.ABORT: gen.FINISH_REASON_ABORT}
_DEFAULTS = SamplingParams()


def _get(pb, name: str, default):
    return getattr(pb, name) if pb.HasField(name) else default


def sampling_from_pb(pb: gen.SamplingParams, logprobs: gen.LogprobOptions) -> SamplingParams:
    """Absent optional fields take the engine defaults (proto3 zero is not "unset"). Values
    are mapped as they are: `SamplingParams.validate` (in `Engine.add`) judges them, so an
    explicit top_k=0 or a seed above 2^63 - 1 is rejected there, naming the field."""
    d = _DEFAULTS
    return SamplingParams(
        temperature=_get(pb, "temperature", d.temperature),
        top_k=_get(pb, "top_k", None), top_p=_get(pb, "top_p", d.top_p),
        min_p=_get(pb, "min_p", d.min_p),
        repetition_penalty=_get(pb, "repetition_penalty", d.repetition_penalty),
        frequency_penalty=_get(pb, "frequency_penalty", d.frequency_penalty),
        presence_penalty=_get(pb, "presence_penalty", d.presence_penalty),
        max_new_tokens=_get(pb, "max_new_tokens", d.max_new_tokens),
        min_new_tokens=_get(pb, "min_new_tokens", d.min_new_tokens),
        stop_token_ids=tuple(pb.stop_token_ids), ignore_eos=_get(pb, "ignore_eos", False),
        seed=_get(pb, "seed", None), logprobs=logprobs.enabled,
        top_logprobs=logprobs.top_logprobs)


def request_from_pb(pb) -> Request:
    """A worker_pb2.WorkerRequest as an engine Request."""
    params = sampling_from_pb(pb.sampling, pb.logprobs)
    return Request(pb.request_id, tuple(pb.prompt_ids), params)


def finish_reason_pb(reason: FinishReason | None) -> int:
    return _FINISH.get(reason, gen.FINISH_REASON_UNSPECIFIED)


def logprobs_pb(token_ids, logprobs, tops) -> list[gen.TokenLogprob]:
    return [gen.TokenLogprob(token_id=t, logprob=lp or 0.0,
                             top=[gen.TopLogprob(token_id=i, logprob=p) for i, p in top])
            for t, lp, top in zip(token_ids, logprobs, tops)]


def memory_pb(plan: dict, usage: dict, strategy: str, ratio: float) -> admin_pb2.MemoryInfo:
    """The engine's memory plan (`MemoryPlan.describe()`) and `pool_usage()` as MemoryInfo."""
    return admin_pb2.MemoryInfo(
        strategy=strategy, page_size=plan["page_size"], mamba_full_memory_ratio=ratio,
        kv_pool_bytes=plan["kv_pool_bytes"], state_pool_bytes=plan["state_pool_bytes"],
        state_bytes_per_slot=plan["state_bytes_per_slot"],
        kv_bytes_per_token=plan["kv_bytes_per_token"],
        max_total_tokens=plan["max_total_tokens"],
        max_running_requests=plan["max_running_requests"],
        pages=admin_pb2.PoolUsage(**usage["pages"]),
        state_slots=admin_pb2.PoolUsage(**usage["state_slots"]))


def integrity_pb(error: str, idle: bool, usage: dict) -> admin_pb2.CheckIntegrityResponse:
    """`Engine.check_integrity`'s outcome (`error`: the first violation, empty when none;
    `idle`: whether the idle checks ran) and `pool_usage()`. Counters are clamped at 0: a broken
    pool can make `used` negative, and the violation is in `error`."""
    def pool(counts: dict) -> admin_pb2.PoolUsage:
        return admin_pb2.PoolUsage(**{name: max(0, n) for name, n in counts.items()})
    return admin_pb2.CheckIntegrityResponse(ok=not error, message=error, idle=idle,
                                            pages=pool(usage["pages"]),
                                            state_slots=pool(usage["state_slots"]))


def stats_pb(stats: dict, throughput: float, draining: bool) -> admin_pb2.Stats:
    cache, spec = stats["prefix_cache"], stats.get("spec")
    extra = {} if spec is None else dict(spec_accept_length=spec["accept_length"],
                                         spec_accept_rate=spec["accept_rate"])
    return admin_pb2.Stats(
        num_running=stats["num_running"], num_waiting=stats["num_waiting"],
        num_requests=stats["num_requests"], num_finished=stats["num_finished"],
        num_generated_tokens=stats["num_tokens"], num_steps=stats["num_steps"],
        num_preemptions=stats["num_preemptions"], generation_throughput=throughput,
        draining=draining,
        prefix_cache=admin_pb2.PrefixCacheStats(
            strategy=cache["strategy"], hit_rate=cache["hit_rate"],
            prompt_tokens=cache["prompt_tokens"], cached_tokens=cache["cached_tokens"],
            inserted_tokens=cache["inserted_tokens"], evicted_pages=cache["evicted_pages"],
            evicted_slots=cache["evicted_slots"]), **extra)
