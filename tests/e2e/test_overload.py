"""Overload on a real server: with --max-queued-requests a burst of streams beyond the bound
gets RESOURCE_EXHAUSTED naming the flag, the accepted ones finish in full, and the pools are
empty afterwards."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from qnext.v1 import admin_pb2_grpc, generation_pb2 as g, generation_pb2_grpc
from tests.e2e.servers import Server, idle, until


def test_burst_beyond_the_queue_bound_is_resource_exhausted(tiny_checkpoint):
    server = Server(tiny_checkpoint("tiny"), "--max-queued-requests", "1",
                    "--max-running-requests", "1")
    try:
        gen = generation_pb2_grpc.GenerationStub(server.data)
        request = g.GenerateRequest(text="burst", sampling=g.SamplingParams(
            temperature=0, max_new_tokens=48, ignore_eos=True))

        def stream(_) -> tuple[str, int, str]:
            try:
                chunks = list(gen.Stream(request, timeout=120))
                return "OK", chunks[-1].complete.usage.completion_tokens, ""
            except grpc.RpcError as err:
                return err.code().name, 0, err.details()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(stream, range(8)))
        codes = [code for code, _, _ in results]
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, results
        assert all(n == 48 for code, n, _ in results if code == "OK")
        assert all("--max-queued-requests" in why for code, _, why in results if code != "OK")
        until(lambda: idle(admin_pb2_grpc.AdminStub(server.control), server.auth))
    finally:
        assert server.stop() == 0
