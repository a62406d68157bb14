"""Request-scoped structured logging of the gRPC servers: `configure_server_logging` (JSON lines
when stderr is not a terminal) and `RequestLogInterceptor`, which binds `rpc` and `request_id`
as structlog contextvars around each call and ends it with one `rpc_done` line. Never logs
metadata (the admin token) or message bodies. Torch-free."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import grpc
import structlog

from qnext.worker.log import configure_logging
from qnext_grpc.handlers import rewrap

log = structlog.get_logger()
QUIET_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")  # probes: `rpc_done` at debug


def configure_server_logging(level: str, json: bool | None = None) -> None:
    """structlog to stderr with timestamp, level and contextvars; `json` None: JSON lines
    unless stderr is a terminal."""
    configure_logging(level, json=not sys.stderr.isatty() if json is None else json)


def request_id_of(request: object) -> str:
    """The message's non-empty `request_id` field, else a new uuid4 hex."""
    given = getattr(request, "request_id", "")
    return given if isinstance(given, str) and given else uuid.uuid4().hex


class _CallLog:
    """Binds the contextvars of one call; on exit writes its `rpc_done` line and unbinds."""

    def __init__(self, method: str, request: object, context: grpc.aio.ServicerContext,
                 quiet: bool) -> None:
        self.method, self.context, self.quiet = method, context, quiet
        self.request_id = request_id_of(request)

    def __enter__(self) -> None:
        self.start = time.monotonic()
        structlog.contextvars.bind_contextvars(rpc=self.method, request_id=self.request_id)

    def __exit__(self, kind, error: BaseException | None, tb) -> None:
        emit = log.debug if self.quiet else log.info
        emit("rpc_done", rpc=self.method, request_id=self.request_id,
             code=_code_name(self.context, error),
             duration_ms=round(1000 * (time.monotonic() - self.start), 1))
        structlog.contextvars.unbind_contextvars("rpc", "request_id")


def _code_name(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # the client went away
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    code = context.code()  # set by context.abort / set_code; None when the call went well
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return "UNKNOWN"  # what grpc answers for an exception the handler let escape
    return "OK"


def _wrap_unary(fn, method: str, quiet: bool):
    async def handler(request, context):
        with _CallLog(method, request, context, quiet):
            return await fn(request, context)
    return handler


def _wrap_stream(fn, method: str, quiet: bool):
    async def handler(request, context):
        with _CallLog(method, request, context, quiet):
            async for item in fn(request, context):
                yield item
    return handler


class RequestLogInterceptor(grpc.aio.ServerInterceptor):
    """One `rpc_done` line (rpc, request_id, code, duration_ms) per unary or server-streaming
    call, with `rpc` and `request_id` bound for everything logged during it. Install it before
    `ErrorInterceptor` so it sees the final status code. `quiet`: method prefixes (health
    probes, reflection) whose `rpc_done` lines log at debug."""

    def __init__(self, quiet: tuple[str, ...] = QUIET_METHODS) -> None:
        self.quiet = quiet

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        method, quiet = details.method, details.method.startswith(self.quiet)
        unary = lambda fn: _wrap_unary(fn, method, quiet)  # noqa: E731
        return rewrap(handler, unary, lambda fn: _wrap_stream(fn, method, quiet), writer=unary)
