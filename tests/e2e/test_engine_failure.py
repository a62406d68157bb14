"""A worker whose engine thread dies ends instead of serving on: `serve_worker` in-process with
a real tiny Engine on 127.0.0.1 and real gRPC clients. The engine fails for a real reason: its
page allocator is reset under two decoding requests (a bookkeeping corruption), so the
allocator's double-free check raises in the step that gives back the pages of the first to
finish. Health goes NOT_SERVING, the other request's stream ends UNAVAILABLE, and
`serve_worker` raises `EngineFailed` (the process exits 1; `qnext serve` then restarts it).
There is no clean way to break the engine of a `qnext worker` process from outside, hence
in-process: docs/reliability.md."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qnext.v1 import generation_pb2 as g, worker_pb2, worker_pb2_grpc
from qnext.worker.engine import Engine
from qnext_grpc.worker_service import EngineFailed, serve_worker
from tests.e2e.servers import serve_config
from tests.net import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _serve(engine: Engine, address: str) -> tuple[threading.Thread, dict]:
    """`serve_worker` on its own thread and event loop; the dict gets what it raised."""
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            asyncio.run(serve_worker(engine, address))
        except BaseException as err:  # EngineFailed is a SystemExit
            outcome["raised"] = err

    thread = threading.Thread(target=run, name="serve-worker", daemon=True)
    thread.start()
    return thread, outcome


def _follow(watch, status: int) -> None:
    """Read the health Watch stream until `status`."""
    assert any(reply.status == status for reply in watch)


def _generate(worker, request_id: str, max_new_tokens: int):
    """A greedy Worker.Generate stream of `max_new_tokens` (EOS ignored)."""
    return worker.Generate(worker_pb2.WorkerRequest(
        request_id=request_id, prompt_ids=[5, 6, 7, 8], sampling=g.SamplingParams(
            temperature=0, max_new_tokens=max_new_tokens, ignore_eos=True)), timeout=120)


def test_a_failed_engine_ends_the_worker(tiny_checkpoint):
    # no prefix cache: a finished request gives every page back to the allocator
    engine = Engine(serve_config(tiny_checkpoint("tiny"), disable_radix_cache=True))
    address = f"127.0.0.1:{free_port()}"
    thread, outcome = _serve(engine, address)
    with grpc.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=120)
        _follow(watch, SERVING)
        worker = worker_pb2_grpc.WorkerStub(channel)
        bystander = _generate(worker, "bystander", 10**4)
        doomed = _generate(worker, "doomed", 64)  # time to reset before it ends
        assert next(bystander).token_ids and next(doomed).token_ids  # both hold pages
        engine.scheduler.pages.reset()  # their pages are no longer held: freeing them fails
        # the finish is reported before its pages go back (the overlap loop), then that fails
        assert list(doomed)[-1].finish_reason == g.FINISH_REASON_LENGTH
        with pytest.raises(grpc.RpcError) as err:
            list(bystander)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        _follow(watch, NOT_SERVING)
        thread.join(timeout=60)
    assert not thread.is_alive()
    raised = outcome["raised"]
    assert isinstance(raised, EngineFailed) and raised.code == 1
    assert isinstance(raised.__cause__, ValueError) and "double free" in str(raised.__cause__)
