"""The load of scripts/soak.py: `--concurrency` asyncio clients sending random requests back
to back (random prompt and output lengths, greedy or sampled, streamed or unary; some aborted
through the Abort RPC or cancelled by the client after a few chunks, some given short
deadlines) and an admin client switching the prefix-cache strategy, re-splitting state / KV
memory and flushing the cache. Every outcome is checked and tallied; anything unintended is
a failure. A gRPC client only."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import grpc

from qnext.v1 import admin_pb2 as a, generation_pb2 as g

KINDS = (("stream", 45), ("unary", 15), ("abort", 15), ("cancel", 15), ("deadline", 10))
INTENDED = {"abort": "aborted", "cancel": "cancelled", "deadline": "deadline_exceeded"}
STRATEGIES = (a.RADIX_STRATEGY_OFF, a.RADIX_STRATEGY_NO_BUFFER, a.RADIX_STRATEGY_EXTRA_BUFFER)
RATIOS = (0.3, 0.5, 0.9, 1.5, 3.0)


@dataclass(frozen=True)
class SoakConfig:
    duration: float = 600.0  # seconds of load; requests running then are let finish
    concurrency: int = 512
    admin_every: float = 15.0  # seconds between admin changes
    max_prompt: int = 256
    max_new: int = 96
    request_timeout: float = 900.0  # the deadline of requests meant to finish
    idle_timeout: float = 900.0  # how long the server may take to go idle afterwards
    seed: int = 0


@dataclass
class Tally:
    """What the clients saw; `failures` keeps the first messages of unintended outcomes."""

    outcomes: Counter = field(default_factory=Counter)  # (kind, outcome) -> requests
    ttft: list[float] = field(default_factory=list)  # seconds, streams
    e2e: list[float] = field(default_factory=list)  # seconds, completed requests
    admin: Counter = field(default_factory=Counter)  # (op, outcome) -> calls
    admin_latency: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    tokens: int = 0

    def fail(self, kind: str, why: str) -> None:
        self.outcomes[kind, "failed"] += 1
        if len(self.failures) < 20:
            self.failures.append(f"{kind}: {why}")


# -- requests -------------------------------------------------------------------------------
def _request(rng: random.Random, cfg: SoakConfig, vocab: int) -> g.GenerateRequest:
    ids = [rng.randrange(1, vocab) for _ in range(rng.randint(1, cfg.max_prompt))]
    sampling = g.SamplingParams(max_new_tokens=rng.randint(1, cfg.max_new),
                                ignore_eos=rng.random() < 0.7)
    if rng.random() < 0.5:
        sampling.temperature, sampling.seed = 0.8, rng.randrange(2**31)
    else:
        sampling.temperature = 0.0
    return g.GenerateRequest(request_id=uuid.uuid4().hex, token_ids=g.TokenIds(ids=ids),
                             sampling=sampling)


def _check(request: g.GenerateRequest, done: g.Complete) -> str | None:
    """Why a finished request's final message is wrong, or None."""
    new, want = done.usage.completion_tokens, request.sampling.max_new_tokens
    if done.finish_reason == g.FINISH_REASON_LENGTH and new == want:
        return None
    if done.finish_reason == g.FINISH_REASON_STOP and not request.sampling.ignore_eos \
            and new <= want:
        return None
    return f"finish {g.FinishReason.Name(done.finish_reason)} after {new} of {want} tokens"


async def _stream(gen, kind: str, request, rng: random.Random, cfg: SoakConfig,
                  tally: Tally) -> str:
    """One streamed request of `kind`; returns its outcome ("completed", "aborted", ...)."""
    timeout = rng.uniform(0.05, 3.0) if kind == "deadline" else cfg.request_timeout
    call, start, chunks = gen.Stream(request, timeout=timeout), time.monotonic(), 0
    stop_after = rng.randint(1, 4) if kind in ("abort", "cancel") else None
    async for reply in call:
        if reply.WhichOneof("kind") == "complete":
            return _finished(request, reply.complete, start, tally)
        chunks += 1
        tally.tokens += len(reply.chunk.token_ids)
        if chunks == 1:
            tally.ttft.append(time.monotonic() - start)
        if chunks == stop_after and kind == "cancel":
            call.cancel()
            return "cancelled"
        if chunks == stop_after:  # abort: the stream goes on to an ABORT final message
            await gen.Abort(g.AbortRequest(request_ids=[request.request_id]), timeout=60)
    raise RuntimeError("the stream ended without a final message")


def _finished(request, done: g.Complete, start: float, tally: Tally) -> str:
    if done.finish_reason == g.FINISH_REASON_ABORT:
        return "aborted"
    why = _check(request, done)
    if why is not None:
        raise RuntimeError(why)
    tally.e2e.append(time.monotonic() - start)
    return "completed"


async def _one(gen, kind: str, rng: random.Random, cfg: SoakConfig, vocab: int,
               tally: Tally) -> None:
    request = _request(rng, cfg, vocab)
    try:
        if kind == "unary":
            start = time.monotonic()
            reply = await gen.Generate(request, timeout=cfg.request_timeout)
            tally.tokens += len(reply.token_ids)
            outcome = _finished(request, reply.complete, start, tally)
        else:
            outcome = await _stream(gen, kind, request, rng, cfg, tally)
    except grpc.aio.AioRpcError as err:
        outcome = {grpc.StatusCode.CANCELLED: "cancelled",
                   grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded"}.get(err.code(), "")
        if outcome != INTENDED.get(kind):
            return tally.fail(kind, f"{err.code().name}: {err.details()}"[:300])
    except RuntimeError as err:
        return tally.fail(kind, str(err))
    if outcome not in ("completed", INTENDED.get(kind)):
        return tally.fail(kind, f"unexpected outcome {outcome}")
    tally.outcomes[kind, outcome] += 1


async def client(index: int, gen, cfg: SoakConfig, vocab: int, until: float,
                  tally: Tally) -> None:
    rng = random.Random(cfg.seed * 100_003 + index)
    kinds, weights = zip(*KINDS)
    while time.monotonic() < until:
        await _one(gen, rng.choices(kinds, weights)[0], rng, cfg, vocab, tally)


# -- admin ----------------------------------------------------------------------------------
async def admin_loop(admin, auth, cfg: SoakConfig, until: float, tally: Tally) -> None:
    """Every `admin_every` seconds the next admin change in turn (strategy switch, resize,
    flush) with random values; FAILED_PRECONDITION (a resize the running requests do not
    fit) is an intended refusal, any other error a failure."""
    rng = random.Random(cfg.seed)
    ops = (("strategy", lambda: admin.SetRadixStrategy(a.SetRadixStrategyRequest(
               strategy=rng.choice(STRATEGIES)), metadata=auth, timeout=600)),
           ("resize", lambda: admin.ResizeMambaCache(a.ResizeMambaCacheRequest(
               ratio=rng.choice(RATIOS)), metadata=auth, timeout=600)),
           ("flush", lambda: admin.FlushCache(a.FlushCacheRequest(), metadata=auth,
                                              timeout=600)))
    turn = 0
    while (left := until - time.monotonic()) > 0:
        await asyncio.sleep(min(cfg.admin_every, left))  # the load's schedule, not a sync
        op, call = ops[turn % len(ops)]
        turn, start = turn + 1, time.monotonic()
        try:
            await call()
            tally.admin[op, "ok"] += 1
        except grpc.aio.AioRpcError as err:
            if err.code() is not grpc.StatusCode.FAILED_PRECONDITION:
                tally.fail(f"admin {op}", f"{err.code().name}: {err.details()}"[:300])
                continue
            tally.admin[op, "refused"] += 1
        tally.admin_latency.append(time.monotonic() - start)
