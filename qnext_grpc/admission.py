"""`Admission`: the data plane's gate for a graceful shutdown. A server interceptor that
counts the generation calls in flight and, once closed, refuses new ones with UNAVAILABLE, so
the front end can wait for the running ones to finish. Torch-free."""

from __future__ import annotations

import asyncio

import grpc

from qnext_grpc.handlers import rewrap


class Admission(grpc.aio.ServerInterceptor):
    """Counts the calls of `methods` in flight (`idle` is set when none is); once closed,
    refuses new ones with UNAVAILABLE. Other methods pass untouched."""

    def __init__(self, *methods: str) -> None:
        self.methods = methods
        self.open, self.in_flight = True, 0
        self.idle = asyncio.Event()
        self.idle.set()

    def close(self) -> None:
        self.open = False

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method not in self.methods:
            return handler
        return rewrap(handler, self._unary, self._stream)

    async def _enter(self, context) -> None:
        if not self.open:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the server is shutting down; not accepting new requests")
        self.in_flight += 1
        self.idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def _unary(self, fn):
        async def handler(request, context):
            await self._enter(context)
            try:
                return await fn(request, context)
            finally:
                self._leave()
        return handler

    def _stream(self, fn):
        async def handler(request, context):
            await self._enter(context)
            try:
                async for item in fn(request, context):
                    yield item
            finally:
                self._leave()
        return handler
