"""Abort, client cancellation and deadlines at every phase of a request on a real server
(`--max-running-requests 1`, `--chunked-prefill-size 8`): queued behind a running request, in
the middle of a chunked prefill, and decoding. Each frees what the request held: the queue
empties, the pools hold nothing in use, after a flush every page and state slot is free again,
and Admin CheckIntegrity (the allocators' and the prefix cache's from-scratch checks, and the
idle checks) passes, also while a prefill runs. test_generation.py also cancels, aborts and
misses a deadline while decoding."""

from __future__ import annotations

import random

import grpc
import pytest

from qnext.v1 import admin_pb2, admin_pb2_grpc, generation_pb2 as g, generation_pb2_grpc
from tests.e2e.servers import Server, all_free, idle, until

LONG = g.SamplingParams(temperature=0, max_new_tokens=10**4, ignore_eos=True)
PROMPT_LEN = 3000  # ~375 chunks of 8: seconds of prefill on the tiny model


@pytest.fixture(scope="module")
def server():
    server = Server(None, "--max-running-requests", "1", "--chunked-prefill-size", "8")
    yield server
    assert server.stop() == 0, server.log.read_text()[-2000:]


@pytest.fixture
def gen(server):
    """The Generation stub; every page and slot is free before and after the test."""
    admin = admin_pb2_grpc.AdminStub(server.control)
    assert all_free(admin, server.auth)
    yield generation_pb2_grpc.GenerationStub(server.data)
    until(lambda: idle(admin, server.auth))
    assert all_free(admin, server.auth)


def stats(server) -> admin_pb2.Stats:
    return admin_pb2_grpc.AdminStub(server.control).GetStats(
        admin_pb2.GetStatsRequest(), metadata=server.auth, timeout=30)


def prompt(seed: int) -> g.TokenIds:
    rng = random.Random(seed)
    return g.TokenIds(ids=[rng.randrange(1, 380) for _ in range(PROMPT_LEN)])


def end(gen, how: str, rid: str, stream, tokens: int = 0) -> None:
    """End request `rid` (its call is `stream`) by `how`: the Abort RPC (the call then ends
    with ABORT; without `tokens` (received), before its first token) or the client's cancel."""
    if how == "abort":
        reply = gen.Abort(g.AbortRequest(request_ids=[rid]), timeout=30)
        assert list(reply.aborted) == [rid]
        last = list(stream)[-1].complete
        assert last.finish_reason == g.FINISH_REASON_ABORT
        assert (last.usage.completion_tokens > 0) == (tokens > 0)
    else:
        stream.cancel()
        with pytest.raises(grpc.RpcError) as err:
            next(stream)
        assert err.value.code() is grpc.StatusCode.CANCELLED


@pytest.mark.parametrize("how", ["abort", "cancel", "deadline"])
def test_queued(server, gen, how):
    running = gen.Stream(g.GenerateRequest(text="first", sampling=LONG), timeout=120)
    assert next(running).chunk.token_ids  # decoding; it holds the one running place
    try:
        timeout = 2 if how == "deadline" else 120  # it cannot be admitted before then
        queued = gen.Stream(g.GenerateRequest(request_id=f"queued-{how}", text="second",
                                              sampling=LONG), timeout=timeout)
        until(lambda: stats(server).num_waiting == 1)
        if how == "deadline":
            with pytest.raises(grpc.RpcError) as err:
                next(queued)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            end(gen, how, f"queued-{how}", queued)
        until(lambda: stats(server).num_waiting == 0)
        assert stats(server).num_running == 1 and next(running).chunk.token_ids  # untouched
    finally:
        running.cancel()


@pytest.mark.parametrize("how", ["abort", "cancel"])
def test_mid_chunked_prefill(server, gen, how):
    generated = stats(server).num_generated_tokens
    rid = f"prefill-{how}"
    stream = gen.Stream(g.GenerateRequest(request_id=rid, token_ids=prompt(len(how)),
                                          sampling=LONG), timeout=120)
    try:
        # admitted, and some chunks are in the KV pool: it is prefilling
        until(lambda: stats(server).num_running == 1 and not all_free(
            admin_pb2_grpc.AdminStub(server.control), server.auth, flush=False))
        end(gen, how, rid, stream)
    finally:
        stream.cancel()
    until(lambda: stats(server).num_running == 0)
    assert stats(server).num_generated_tokens == generated  # it ended before its first token


@pytest.mark.parametrize("how", ["abort", "cancel"])
def test_decoding(server, gen, how):
    rid = f"decode-{how}"
    stream = gen.Stream(g.GenerateRequest(request_id=rid, text="third", sampling=LONG),
                        timeout=120)
    assert next(stream).chunk.token_ids
    end(gen, how, rid, stream, tokens=1)
