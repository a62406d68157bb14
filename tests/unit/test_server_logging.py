"""`qnext_grpc.logging`: a real grpc.aio server on 127.0.0.1 with a tiny Generation servicer
behind `RequestLogInterceptor`. One `rpc_done` per call with the right request id and code,
contextvars bound inside handlers and isolated between concurrent calls, the admin token never
logged; `configure_server_logging` picks JSON or console lines."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
import structlog
from structlog.contextvars import get_contextvars, merge_contextvars
from structlog.testing import capture_logs

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from qnext.v1 import generation_pb2 as gen, generation_pb2_grpc
from qnext_grpc.errors import ErrorInterceptor
from qnext_grpc.logging import RequestLogInterceptor, configure_server_logging

GENERATE = "/qnext.v1.Generation/Generate"
STREAM = "/qnext.v1.Generation/Stream"
TOKEN = "tok-5up3r-s3cret"
log = structlog.get_logger()


class TinyGeneration(generation_pb2_grpc.GenerationServicer):
    """Generate answers with the bound request id; text "wait" holds until two calls are in,
    "raise" raises a ValueError, "slow" sleeps; Stream yields two chunks, or aborts after one
    for text "bad"."""

    def __init__(self) -> None:
        self.arrived = 0
        self.both_in = asyncio.Event()

    async def Generate(self, request, context):
        log.info("in_handler")
        if request.text == "raise":
            raise ValueError("no such thing")
        if request.text == "slow":
            await asyncio.sleep(30)
        if request.text == "wait":
            self.arrived += 1
            if self.arrived == 2:
                self.both_in.set()
            await self.both_in.wait()
            log.info("after_wait")
        return gen.GenerateResponse(request_id=get_contextvars()["request_id"], text="hi")

    async def Stream(self, request, context):
        for n in range(2):
            log.info("chunk", n=n)
            yield gen.StreamResponse(chunk=gen.StreamChunk(text=str(n)))
            if request.text == "bad":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad text")


async def with_server(body, *inner: grpc.aio.ServerInterceptor) -> None:
    server = grpc.aio.server(interceptors=[RequestLogInterceptor(), *inner])
    generation_pb2_grpc.add_GenerationServicer_to_server(TinyGeneration(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await body(channel)
    finally:
        await server.stop(None)


def run_logged(body, *inner: grpc.aio.ServerInterceptor) -> list[dict]:
    with capture_logs(processors=[merge_contextvars]) as logs:
        asyncio.run(with_server(body, *inner))
    return logs


def done(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "rpc_done"]


pytestmark = pytest.mark.usefixtures("default_structlog")


def test_unary_call_with_client_request_id():
    async def body(channel) -> None:
        stub = generation_pb2_grpc.GenerationStub(channel)
        reply = await stub.Generate(gen.GenerateRequest(request_id="req-1", text="x"))
        assert reply.request_id == "req-1"  # bound inside the handler

    logs = run_logged(body)
    [line] = done(logs)
    assert (line["rpc"], line["request_id"], line["code"], line["log_level"]) == \
        (GENERATE, "req-1", "OK", "info")
    assert line["duration_ms"] >= 0
    [inside] = [e for e in logs if e["event"] == "in_handler"]
    assert (inside["rpc"], inside["request_id"]) == (GENERATE, "req-1")


def test_generated_request_id_is_shared_by_handler_and_done_line():
    replies = []

    async def body(channel) -> None:
        stub = generation_pb2_grpc.GenerationStub(channel)
        replies.append(await stub.Generate(gen.GenerateRequest(text="x")))
        replies.append(await stub.Generate(gen.GenerateRequest(text="x")))

    logs = run_logged(body)
    ids = [line["request_id"] for line in done(logs)]
    assert ids == [r.request_id for r in replies]
    assert len(set(ids)) == 2 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert [e["request_id"] for e in logs if e["event"] == "in_handler"] == ids


def test_stream_ok_and_aborted():
    async def body(channel) -> None:
        stub = generation_pb2_grpc.GenerationStub(channel)
        chunks = [m async for m in stub.Stream(gen.GenerateRequest(request_id="s-ok"))]
        assert len(chunks) == 2
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Stream(gen.GenerateRequest(request_id="s-bad", text="bad")):
                pass
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    logs = run_logged(body)
    assert [(e["rpc"], e["request_id"], e["code"]) for e in done(logs)] == \
        [(STREAM, "s-ok", "OK"), (STREAM, "s-bad", "INVALID_ARGUMENT")]
    assert [(e["request_id"], e["n"]) for e in logs if e["event"] == "chunk"] == \
        [("s-ok", 0), ("s-ok", 1), ("s-bad", 0)]


def test_final_codes_behind_the_error_interceptor_and_quiet_health():
    async def body(channel) -> None:
        stub = generation_pb2_grpc.GenerationStub(channel)
        for text, timeout in (("raise", None), ("slow", 0.1)):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Generate(gen.GenerateRequest(request_id=text, text=text),
                                    timeout=timeout)
        health_stub = health_pb2_grpc.HealthStub(channel)
        await health_stub.Check(health_pb2.HealthCheckRequest())

    logs = run_logged(body, ErrorInterceptor())
    assert [(e["request_id"], e["code"], e["log_level"]) for e in done(logs)][:2] == \
        [("raise", "INVALID_ARGUMENT", "info"), ("slow", "DEADLINE_EXCEEDED", "info")]
    [probe] = [e for e in done(logs) if e["rpc"] == "/grpc.health.v1.Health/Check"]
    assert (probe["code"], probe["log_level"]) == ("OK", "debug")


def test_concurrent_calls_keep_their_own_context():
    async def body(channel) -> None:
        stub = generation_pb2_grpc.GenerationStub(channel)
        replies = await asyncio.gather(
            stub.Generate(gen.GenerateRequest(request_id="a", text="wait")),
            stub.Generate(gen.GenerateRequest(request_id="b", text="wait")))
        assert [r.request_id for r in replies] == ["a", "b"]

    logs = run_logged(body)
    after = sorted(e["request_id"] for e in logs if e["event"] == "after_wait")
    assert after == ["a", "b"]  # both were inside at once, each still saw its own id
    assert sorted((e["request_id"], e["code"]) for e in done(logs)) == [("a", "OK"), ("b", "OK")]


def test_contextvars_are_unbound_after_the_call():
    async def body(channel) -> None:
        stub = generation_pb2_grpc.GenerationStub(channel)
        await stub.Generate(gen.GenerateRequest(request_id="r", text="x"))
        log.info("client_after")

    logs = run_logged(body)
    [after] = [e for e in logs if e["event"] == "client_after"]
    assert "request_id" not in after and "rpc" not in after


def test_token_and_bodies_never_reach_the_log_output(capsys):
    configure_server_logging("debug", json=True)
    metadata = (("authorization", f"Bearer {TOKEN}"),)

    async def body(channel) -> None:
        stub = generation_pb2_grpc.GenerationStub(channel)
        await stub.Generate(gen.GenerateRequest(request_id="t-1", text="private prompt"),
                            metadata=metadata)
        async for _ in stub.Stream(gen.GenerateRequest(request_id="t-2", text="bad"),
                                   metadata=metadata):
            pass

    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(with_server(body))
    err = capsys.readouterr().err
    assert TOKEN not in err and "authorization" not in err and "private prompt" not in err
    events = [json.loads(line) for line in err.splitlines()]
    lines = [e for e in events if e["event"] == "rpc_done"]
    assert [(e["request_id"], e["code"]) for e in lines] == \
        [("t-1", "OK"), ("t-2", "INVALID_ARGUMENT")]
    assert {"timestamp", "level", "rpc", "duration_ms"} <= lines[0].keys()


@pytest.mark.parametrize("flag, want_json", [(None, True), (True, True), (False, False)])
def test_configure_server_logging_format(capsys, flag, want_json):
    configure_server_logging("info", json=flag)  # captured stderr is not a terminal
    with structlog.contextvars.bound_contextvars(request_id="ctx-1"):
        structlog.get_logger().info("hello", n=1)
    structlog.get_logger().debug("hidden")
    [line] = capsys.readouterr().err.splitlines()
    if want_json:
        event = json.loads(line)
        assert (event["event"], event["level"], event["request_id"], event["n"]) == \
            ("hello", "info", "ctx-1", 1)
        assert "timestamp" in event
    else:
        assert "hello" in line and "request_id=ctx-1" in line and not line.startswith("{")
