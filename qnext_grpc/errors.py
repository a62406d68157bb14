"""The one place domain errors become gRPC status codes: `ErrorInterceptor` wraps every unary
and server-streaming handler of a grpc.aio server.

    RequestRejected, ValueError (ConfigError, TextError, ...)  -> INVALID_ARGUMENT
    Unsupported                                              -> UNIMPLEMENTED
    Conflict                                                 -> FAILED_PRECONDITION
    QueueFull                                                -> RESOURCE_EXHAUSTED
    Draining, BridgeClosed, WorkerUnavailable                -> UNAVAILABLE
    an error status from the worker                          -> the same status
    a request that does not parse (bad bytes, bad UTF-8)     -> INVALID_ARGUMENT
    anything else                                            -> INTERNAL (logged with traceback)

Details are cut to MAX_DETAILS characters: an echoed huge value must not turn the answer into
RESOURCE_EXHAUSTED (gRPC's metadata limit).

Cancellation (the client went away) propagates untouched.
"""

from __future__ import annotations

import asyncio

import grpc
import structlog
from google.protobuf.message import DecodeError

from qnext.worker.sched.request import QueueFull, RequestRejected
from qnext_grpc.bridge import BridgeClosed, Draining
from qnext_grpc.handlers import rewrap

log = structlog.get_logger()
MAX_DETAILS = 500


class Undecodable:
    """What the deserializer hands the handler instead of a request that does not parse."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(parse):
    def deserialize(data: bytes):
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(str(exc) or "malformed message")
    return deserialize


class Unsupported(RuntimeError):
    """The operation exists in the API but this server cannot do it (yet)."""


class Conflict(RuntimeError):
    """The operation is impossible in the current state."""


class WorkerUnavailable(RuntimeError):
    """The worker daemon is not reachable."""


_CODES = ((RequestRejected, grpc.StatusCode.INVALID_ARGUMENT),
          (Unsupported, grpc.StatusCode.UNIMPLEMENTED),
          (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
          (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
          ((Draining, BridgeClosed, WorkerUnavailable), grpc.StatusCode.UNAVAILABLE),
          (ValueError, grpc.StatusCode.INVALID_ARGUMENT))


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code(), exc.details() or exc.code().name
    for types, code in _CODES:
        if isinstance(exc, types):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    code, message = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("rpc_failed", method=method, exc_info=exc)
    if len(message) > MAX_DETAILS:
        message = message[:MAX_DETAILS] + "..."
    await context.abort(code, message)


async def _reject_undecodable(context, request) -> None:
    if isinstance(request, Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"request: cannot parse ({request.reason[:200]})")


def _wrap_unary(fn, method: str):
    async def handler(request, context):
        await _reject_undecodable(context, request)
        try:
            return await fn(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc, method)
    return handler


def _wrap_stream(fn, method: str):
    async def handler(request, context):
        await _reject_undecodable(context, request)
        try:
            async for item in fn(request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc, method)
    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        return rewrap(handler, lambda fn: _wrap_unary(fn, method),
                      lambda fn: _wrap_stream(fn, method), deserializer=_tolerant)
