"""`EngineBridge`: runs the synchronous engine on its own thread and gives asyncio callers
(the worker's gRPC handlers) a request API. The only module that knows both asyncio and the
engine; it imports no torch itself (the engine is handed in).

The engine thread owns the engine: every add, abort and admin call is queued and run by that
thread between steps, so admin operations always happen at a step boundary. Each request's
outputs are grouped per step into one `Event` and delivered to its asyncio queue. If the engine
thread dies, every open request and pending call fails with `BridgeClosed`, later ones are
refused, and `failed` is set (the worker then exits).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger()


class BridgeClosed(RuntimeError):
    """The engine thread has stopped (shutdown or a fatal engine error)."""


class Draining(RuntimeError):
    """New requests are refused while the server drains."""


@dataclass
class Event:
    """What one step produced for one request."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[tuple] = field(default_factory=list)
    finish_reason: Any = None  # a FinishReason on the last event
    cached_tokens: int = 0
    queue_ms: float = 0.0


class EngineBridge:
    def __init__(self, engine) -> None:
        self.engine = engine
        self.draining = False
        self.error: BaseException | None = None
        self.failed = asyncio.Event()  # set on the event loop once the engine thread died
        self._calls: set[asyncio.Future] = set()  # futures of `call`s not settled yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cv = threading.Condition()
        self._jobs: list[Callable[[], None]] = []
        self._queues: dict[str, asyncio.Queue] = {}
        self._stopping = False
        self._rate: deque[tuple[float, int]] = deque(maxlen=4096)  # (time, tokens so far)
        self._tokens = 0
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # -- asyncio side ---------------------------------------------------------------------
    async def call(self, fn: Callable[[Any], Any]) -> Any:
        """Run fn(engine) on the engine thread at a step boundary; returns its result."""
        if self.error is not None or self._stopping:
            raise BridgeClosed("the engine has stopped") from self.error
        future = self._loop.create_future()

        def job() -> None:
            try:
                result, exc = fn(self.engine), None
            except Exception as err:  # handed to the caller
                result, exc = None, err
            self._loop.call_soon_threadsafe(_settle, future, result, exc)

        self._calls.add(future)
        future.add_done_callback(self._calls.discard)
        self._post(job)
        return await future

    async def reconfigure(self, **changes) -> Any:
        """`engine.reconfigure(**changes)` at a step boundary; the outputs of the step it
        retires reach their requests; returns the new memory plan."""
        def job(engine):
            plan, outputs = engine.reconfigure(**changes)
            self._dispatch(outputs)
            return plan
        return await self.call(job)

    async def submit(self, request) -> AsyncIterator[Event]:
        """Queue `request` (a worker Request); raises RequestRejected / Draining before any
        event. Iterate the result for its events; the last one carries a finish reason."""
        if self.draining:
            raise Draining("the server is draining; not accepting new requests")
        queue: asyncio.Queue = asyncio.Queue()
        rid = request.request_id

        def add(engine) -> None:
            engine.add(request)
            self._queues[rid] = queue

        await self.call(add)
        return self._events(rid, queue)

    def abort(self, request_id: str) -> None:
        """Abort a request wherever it is; its stream then ends with ABORT."""
        self._post(lambda: self.engine.abort(request_id))

    async def abort_now(self, request_ids: list[str]) -> list[bool]:
        return await self.call(lambda engine: [engine.abort(r) for r in request_ids])

    async def _events(self, rid: str, queue: asyncio.Queue) -> AsyncIterator[Event]:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise BridgeClosed("the engine failed") from item
            yield item
            if item.finish_reason is not None:
                return

    # -- engine thread --------------------------------------------------------------------
    def _post(self, job: Callable[[], None]) -> None:
        with self._cv:
            self._jobs.append(job)
            self._cv.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not (self._jobs or self._stopping or self.engine.has_work):
                        self._cv.wait()
                    if self._stopping:
                        return
                    jobs, self._jobs = self._jobs, []
                for job in jobs:
                    job()
                if self.engine.has_work:
                    outputs = self.engine.step()
                    self._tokens += sum(o.token_id is not None for o in outputs)
                    self._rate.append((time.monotonic(), self._tokens))
                    self._dispatch(outputs)
        except BaseException as err:  # fatal: fail every open request, refuse new ones
            log.exception("engine_failed")
            self.error = err
            for queue in self._queues.values():
                self._loop.call_soon_threadsafe(queue.put_nowait, err)
            self._loop.call_soon_threadsafe(self._on_failure)

    def _on_failure(self) -> None:
        """On the event loop, after the engine thread died: fail the calls whose jobs will
        never run (jobs that ran were settled before this), then set `failed`."""
        for future in list(self._calls):
            if not future.done():
                closed = BridgeClosed("the engine failed")
                closed.__cause__ = self.error
                future.set_exception(closed)
        self.failed.set()

    def _dispatch(self, outputs) -> None:
        events: dict[str, Event] = {}
        for out in outputs:
            if out.request_id not in self._queues:
                continue  # cancelled by its caller
            event = events.setdefault(out.request_id, Event())
            if out.token_id is not None:
                event.token_ids.append(out.token_id)
                event.logprobs.append(out.logprob)
                event.top_logprobs.append(out.top_logprobs)
            if out.finish_reason is not None:
                event.finish_reason = out.finish_reason
                event.cached_tokens = out.cached_tokens or 0
                event.queue_ms = 1000.0 * (out.queue_time or 0.0)
        for rid, event in events.items():
            queue = self._queues[rid]
            if event.finish_reason is not None:
                del self._queues[rid]
            self._loop.call_soon_threadsafe(queue.put_nowait, event)

    def throughput(self, window: float = 5.0) -> float:
        """Generated tokens per second over the last `window` seconds (0 when idle)."""
        now, samples = time.monotonic(), list(self._rate)
        recent = [(t, n) for t, n in samples if now - t <= window]
        if not recent:
            return 0.0
        older = [(t, n) for t, n in samples if now - t > window]
        t0, n0 = older[-1] if older else recent[0]
        return (self._tokens - n0) / max(now - t0, 1e-6)

    def forget(self, request_id: str) -> None:
        """Stop delivering events of a request whose caller went away (then abort it)."""
        self._post(lambda: self._queues.pop(request_id, None))
        self.abort(request_id)


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled by its caller, or failed with the engine
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
