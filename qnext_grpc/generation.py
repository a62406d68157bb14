"""`GenerationService`: the data plane (`qnext.v1.Generation`). Turns text, chat or ids into a
tokenized worker request, relays the worker's token stream as text deltas (stop strings,
reasoning split, usage, timing), and aborts the worker request when the client goes away or a
stop string ends the text early. Long prompts are tokenized off the event loop, so a huge
text does not stall other calls. Torch-free."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import structlog

from qnext.v1 import generation_pb2 as gen, generation_pb2_grpc, worker_pb2
from qnext_grpc.metrics import Metrics, finish_outcome
from qnext_grpc.output import Delta, OutputAssembler
from qnext_grpc.text import TextError, TextTokenizer
from qnext_grpc.worker_client import WorkerClient

#: prompts of at most this many characters are tokenized on the event loop, longer ones on a
#: thread (`TextTokenizer.encode` releases the GIL)
INLINE_PROMPT_CHARS = 4096


class GenerationService(generation_pb2_grpc.GenerationServicer):
    def __init__(self, worker: WorkerClient, tokenizer: TextTokenizer,
                 metrics: Metrics | None = None) -> None:
        self.worker, self.tokenizer, self.metrics = worker, tokenizer, metrics

    async def Generate(self, request, context):
        call = await self._call(request, "Generate")
        complete = None
        async for item in call.run(request):
            if isinstance(item, gen.Complete):
                complete = item
        asm = call.asm
        return gen.GenerateResponse(
            request_id=call.rid, text="".join(asm.text), reasoning_text="".join(asm.reasoning),
            token_ids=asm.token_ids, logprobs=call.logprobs, complete=complete)

    async def Stream(self, request, context):
        call = await self._call(request, "Stream")
        async for item in call.run(request):
            if isinstance(item, gen.Complete):
                yield gen.StreamResponse(request_id=call.rid, complete=item)
            elif item.text or item.reasoning or item.token_ids:
                yield gen.StreamResponse(request_id=call.rid, chunk=gen.StreamChunk(
                    text=item.text, reasoning_text=item.reasoning, token_ids=item.token_ids,
                    logprobs=item.logprobs, usage=call.usage()))

    async def Abort(self, request, context):
        """Each id once, so none is both aborted and not found."""
        ids = list(dict.fromkeys(request.request_ids))
        return await self.worker.stub.Abort(gen.AbortRequest(request_ids=ids))

    async def _call(self, request, method: str) -> _Call:
        sampling = request.sampling
        skip = sampling.skip_special_tokens if sampling.HasField("skip_special_tokens") else True
        if _prompt_chars(request) > INLINE_PROMPT_CHARS:
            prompt = await asyncio.to_thread(self._prompt_ids, request)
        else:
            prompt = self._prompt_ids(request)
        asm = OutputAssembler(self.tokenizer, prompt, list(sampling.stop), skip,
                              request.separate_reasoning)
        rid = (request.request_id or structlog.contextvars.get_contextvars().get("request_id")
               or uuid.uuid4().hex)  # the id the request log line carries
        return _Call(self.worker, rid, prompt, asm, method, self.metrics)

    def _prompt_ids(self, request) -> list[int]:
        kind = request.WhichOneof("input")
        if kind is None:
            raise TextError("input: set one of text, token_ids or chat")
        if kind == "token_ids":
            if not request.token_ids.ids:
                raise TextError("input: token_ids is empty")
            return list(request.token_ids.ids)
        if kind == "text":
            text = request.text
        else:
            chat = request.chat
            messages = [{"role": m.role, "content": m.content} for m in chat.messages]
            add = chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add)
        if not text:
            raise TextError("input: the prompt is empty")
        return self.tokenizer.encode(text)


def _prompt_chars(request) -> int:
    """Characters of a text or chat prompt (0 for token ids)."""
    kind = request.WhichOneof("input")
    if kind == "text":
        return len(request.text)
    if kind == "chat":
        return sum(len(m.content) + len(m.role) for m in request.chat.messages)
    return 0


class _Call:
    """One Generate / Stream call: its prompt, its output so far, its timing."""

    def __init__(self, worker: WorkerClient, rid: str, prompt: list[int], asm: OutputAssembler,
                 method: str, metrics: Metrics | None) -> None:
        self.worker, self.rid, self.prompt, self.asm = worker, rid, prompt, asm
        self.method, self.metrics = method, metrics
        self.logprobs: list = []
        self.start = time.monotonic()
        self.ttft: float | None = None
        self.token_times: list[float] = []

    async def run(self, request) -> AsyncIterator[Delta | gen.Complete]:
        """Yields Deltas, then one Complete."""
        call = self.worker.stub.Generate(worker_pb2.WorkerRequest(
            request_id=self.rid, prompt_ids=self.prompt, sampling=request.sampling,
            logprobs=request.logprobs))
        reason, cached, queue_ms = gen.FINISH_REASON_UNSPECIFIED, 0, 0.0
        try:
            async for event in call:
                if event.token_ids:
                    self.token_times.append(time.monotonic())
                    self.ttft = self.ttft or self.token_times[0] - self.start
                self.logprobs += list(event.logprobs)
                yield self.asm.push(list(event.token_ids), list(event.logprobs))
                if event.finish_reason:
                    reason, cached = event.finish_reason, event.cached_tokens
                    queue_ms = event.queue_ms
                    break
                if self.asm.matched_stop is not None:  # the text is complete: stop the worker
                    reason = gen.FINISH_REASON_STOP
                    await self._end_early(call)
                    break
        finally:
            call.cancel()  # a no-op once finished; otherwise the worker aborts the request
        yield self.asm.finish()
        done = self._complete(request, reason, cached, queue_ms)
        self._observe(done)
        yield done

    async def _end_early(self, call) -> None:
        """Abort the worker's request and wait for its last event (its tokens are dropped):
        once the client hears back, the request id is free again and the pages released."""
        try:
            await self.worker.stub.Abort(gen.AbortRequest(request_ids=[self.rid]))
            async for _ in call:
                pass
        except grpc.aio.AioRpcError:
            pass  # the worker went away: the text is complete all the same

    def _observe(self, done: gen.Complete) -> None:
        if self.metrics is None:
            return
        times = self.token_times
        self.metrics.observe_token_gaps([b - a for a, b in zip(times, times[1:])])
        usage, timing = done.usage, done.timing
        self.metrics.observe_request(
            self.method, finish_outcome(done.finish_reason), usage.prompt_tokens,
            usage.completion_tokens, usage.cached_tokens, self.ttft, timing.e2e_ms / 1000,
            timing.queue_ms / 1000)

    def usage(self, cached: int = 0) -> gen.Usage:
        return gen.Usage(prompt_tokens=len(self.prompt),
                         completion_tokens=len(self.asm.token_ids), cached_tokens=cached)

    def _complete(self, request, reason, cached, queue_ms) -> gen.Complete:
        done = gen.Complete(finish_reason=reason, usage=self.usage(cached), timing=gen.Timing(
            queue_ms=queue_ms, ttft_ms=1000 * (self.ttft or 0.0),
            e2e_ms=1000 * (time.monotonic() - self.start)))
        if self.asm.matched_stop is not None:
            done.matched_stop_str = self.asm.matched_stop
        elif reason == gen.FINISH_REASON_STOP and self.asm.token_ids and \
                self.asm.token_ids[-1] in request.sampling.stop_token_ids:
            done.matched_token_id = self.asm.token_ids[-1]
        return done
