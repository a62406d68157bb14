"""`qnext bench` load: synthetic workloads and the asyncio gRPC driver.

Workloads are random token ids (nothing to download): `random-ids` draws input / output lengths
from [len * range_ratio, len]; `shared-prefix` gives groups of prompts a common random prefix
(the prefix cache and its recurrent-state snapshots get exercised, like SGLang's
`generated-shared-prefix`). Requests stream through Generation.Stream with `ignore_eos`, so
output lengths are exact. Arrivals follow a gamma process (`burstiness` 1.0 = Poisson) at
`request_rate`, or all at once (inf); `max_concurrency` caps requests in flight.
A gRPC client only: never imports torch.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from qnext.cli.bench_metrics import RequestRecord
from qnext.cli.channels import open_channel


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]


def _length(rng: random.Random, target: int, range_ratio: float) -> int:
    return rng.randint(max(1, int(target * range_ratio)), max(1, target))


def random_ids(num: int, input_len: int, output_len: int, range_ratio: float, vocab_size: int,
               seed: int) -> Workload:
    """`num` prompts of random ids in [0, vocab_size)."""
    rng = random.Random(seed)
    prompts, outs = [], []
    for _ in range(num):
        prompts.append([rng.randrange(vocab_size)
                        for _ in range(_length(rng, input_len, range_ratio))])
        outs.append(_length(rng, output_len, range_ratio))
    return Workload(prompts, outs)


def shared_prefix(num: int, groups: int, prefix_len: int, input_len: int, output_len: int,
                  range_ratio: float, vocab_size: int, seed: int) -> Workload:
    """`num` prompts in `groups` groups: a group's random prefix, then a random suffix of
    about `input_len` tokens; prompts of a group are interleaved with the other groups'."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(vocab_size) for _ in range(prefix_len)] for _ in range(groups)]
    suffixes = random_ids(num, input_len, output_len, range_ratio, vocab_size, seed + 1)
    prompts = [prefixes[i % groups] + suffix for i, suffix in enumerate(suffixes.prompts)]
    return Workload(prompts, suffixes.output_lens)


def arrival_gaps(num: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """Seconds to wait before each request: gamma(burstiness, 1 / (rate * burstiness)) gaps,
    all zero for an infinite rate."""
    if math.isinf(request_rate):
        return [0.0] * num
    rng = random.Random(seed)
    scale = 1.0 / (request_rate * burstiness)
    return [rng.gammavariate(burstiness, scale) for _ in range(num)]


@dataclass(frozen=True)
class Target:
    """Where and how requests go."""

    addr: str
    tls_ca: Path | None = None
    timeout: float = 600.0
    temperature: float = 0.0


async def _one(stub, prompt: list[int], output_len: int, target: Target) -> RequestRecord:
    """Stream one request, timing every token-carrying chunk."""
    import grpc

    from qnext.v1 import generation_pb2 as g

    record = RequestRecord(prompt_len=len(prompt))
    request = g.GenerateRequest(
        token_ids=g.TokenIds(ids=prompt),
        sampling=g.SamplingParams(max_new_tokens=output_len, ignore_eos=True,
                                  temperature=target.temperature))
    start = last = time.perf_counter()
    try:
        async for msg in stub.Stream(request, timeout=target.timeout):
            now = time.perf_counter()
            if msg.WhichOneof("kind") == "complete":
                record.output_len = msg.complete.usage.completion_tokens
                record.e2e = now - start
            elif msg.chunk.token_ids:
                if record.ttft is None:
                    record.ttft = now - start
                else:
                    record.itl.append(now - last)
                last = now
    except grpc.aio.AioRpcError as err:
        record.error = err.code().name
    return record


async def drive(target: Target, workload: Workload, *, request_rate: float = math.inf,
                burstiness: float = 1.0, max_concurrency: int | None = None,
                seed: int = 0) -> tuple[list[RequestRecord], float]:
    """Send the workload; returns (records in send order, seconds from first send to last
    completion)."""
    from qnext.v1 import generation_pb2_grpc

    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    gaps = arrival_gaps(len(workload.prompts), request_rate, burstiness, seed)
    async with open_channel(target.addr, target.tls_ca, aio=True) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)

        async def limited(prompt: list[int], out: int) -> RequestRecord:
            if gate is None:
                return await _one(stub, prompt, out, target)
            async with gate:
                return await _one(stub, prompt, out, target)

        start = time.perf_counter()
        tasks = []
        for gap, prompt, out in zip(gaps, workload.prompts, workload.output_lens):
            if gap:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(limited(prompt, out)))
        records = list(await asyncio.gather(*tasks))
        return records, time.perf_counter() - start
