"""Rebuilding a grpc.aio method handler around a wrapper: the one shape both of qnext's
interceptors (errors, request logs) need. Only async handlers are wrapped; sync and
client-streaming ones pass through."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import grpc

Wrap = Callable[[Callable], Callable]


def rewrap(handler: grpc.RpcMethodHandler, unary: Wrap, stream: Wrap,
           writer: Wrap | None = None,
           deserializer: Wrap | None = None) -> grpc.RpcMethodHandler:
    """`unary` wraps a coroutine unary-unary handler, `stream` an async-generator
    unary-stream one; `writer`, if given, a coroutine unary-stream handler (one that answers
    with `context.write`, like health Watch); `deserializer`, if given, the request
    deserializer of the wrapped handlers. Anything else is returned unchanged."""
    parse = handler.request_deserializer
    kw = dict(request_deserializer=parse if deserializer is None or parse is None
              else deserializer(parse), response_serializer=handler.response_serializer)
    if inspect.iscoroutinefunction(handler.unary_unary):
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
    if inspect.isasyncgenfunction(handler.unary_stream):
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kw)
    if writer is not None and inspect.iscoroutinefunction(handler.unary_stream):
        return grpc.unary_stream_rpc_method_handler(writer(handler.unary_stream), **kw)
    return handler
