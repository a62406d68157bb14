"""`qnext_grpc.metrics`: real `Metrics` registries rendered to the text format, a real HTTP
scrape of `/metrics`, and the worker poller against a real in-test grpc.aio Admin server with
fixed answers (and a failing phase)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import grpc
import prometheus_client
import pytest
from structlog.testing import capture_logs

from qnext.v1 import admin_pb2, admin_pb2_grpc, generation_pb2
from qnext_grpc.metrics import Metrics, finish_outcome, poll_once, poll_worker
from tests.net import free_port

STATS = admin_pb2.Stats(num_running=3, num_waiting=7, generation_throughput=456.5,
                        prefix_cache=admin_pb2.PrefixCacheStats(hit_rate=0.625))
MEMORY = admin_pb2.MemoryInfo(
    pages=admin_pb2.PoolUsage(total=4096, used=1000, cached=2000, evictable=1500, free=1096),
    state_slots=admin_pb2.PoolUsage(total=48, used=11, cached=20, evictable=17, free=17))


def lines(metrics: Metrics) -> set[str]:
    return {line for line in metrics.render().decode().splitlines()
            if not line.startswith("#")}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


pytestmark = pytest.mark.usefixtures("default_structlog")


def test_requests_tokens_and_latency_histograms_render():
    m = Metrics()
    m.observe_request("Generate", "stop", prompt_tokens=10, completion_tokens=5,
                      cached_tokens=4, ttft_s=0.04, e2e_s=1.2, queue_s=0.003)
    m.observe_request("Generate", "stop", 6, 2, 0, 0.2, 0.9, 0.0)
    m.observe_request("Stream", "INVALID_ARGUMENT", 0, 0, 0, None, 0.001, 0.0)
    text = lines(m)
    assert 'qnext_requests_total{method="Generate",outcome="stop"} 2.0' in text
    assert 'qnext_requests_total{method="Stream",outcome="INVALID_ARGUMENT"} 1.0' in text
    assert {"qnext_prompt_tokens_total 16.0", "qnext_generation_tokens_total 7.0",
            "qnext_cached_prompt_tokens_total 4.0"} <= text
    assert {'qnext_time_to_first_token_seconds_bucket{le="0.025"} 0.0',
            'qnext_time_to_first_token_seconds_bucket{le="0.05"} 1.0',
            'qnext_time_to_first_token_seconds_bucket{le="0.25"} 2.0',
            'qnext_time_to_first_token_seconds_bucket{le="+Inf"} 2.0',
            "qnext_time_to_first_token_seconds_count 2.0"} <= text  # no first token: no TTFT
    assert {'qnext_e2e_request_latency_seconds_bucket{le="0.1"} 1.0',
            'qnext_e2e_request_latency_seconds_bucket{le="1.0"} 2.0',
            'qnext_e2e_request_latency_seconds_bucket{le="1.5"} 3.0',
            "qnext_e2e_request_latency_seconds_count 3.0"} <= text
    assert value(m, "qnext_e2e_request_latency_seconds_sum") == pytest.approx(2.101)
    assert 'qnext_request_queue_time_seconds_bucket{le="0.001"} 2.0' in text
    assert 'qnext_request_queue_time_seconds_bucket{le="0.005"} 3.0' in text


def test_token_gaps_fill_the_inter_token_histogram():
    m = Metrics()
    m.observe_token_gaps([0.004, 0.012, 0.012, 0.5])
    m.observe_token_gaps([])
    text = lines(m)
    assert {'qnext_inter_token_latency_seconds_bucket{le="0.002"} 0.0',
            'qnext_inter_token_latency_seconds_bucket{le="0.005"} 1.0',
            'qnext_inter_token_latency_seconds_bucket{le="0.015"} 3.0',
            'qnext_inter_token_latency_seconds_bucket{le="0.5"} 4.0',
            "qnext_inter_token_latency_seconds_count 4.0"} <= text


def test_worker_gauges_follow_stats_and_memory():
    m = Metrics()
    m.update_from(STATS, MEMORY)
    assert {"qnext_num_requests_running 3.0", "qnext_num_requests_waiting 7.0",
            "qnext_kv_pages_used 1000.0", "qnext_kv_pages_cached 2000.0",
            "qnext_kv_pages_free 1096.0", "qnext_state_slots_used 11.0",
            "qnext_state_slots_cached 20.0", "qnext_state_slots_free 17.0",
            "qnext_prefix_cache_hit_rate 0.625",
            "qnext_generation_throughput_tokens_per_second 456.5"} <= lines(m)


def test_each_metrics_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.observe_request("Generate", "length", 3, 1, 0, 0.1, 0.2, 0.0)
    assert value(a, "qnext_prompt_tokens_total") == 3
    assert value(b, "qnext_prompt_tokens_total") == 0
    assert prometheus_client.REGISTRY.get_sample_value("qnext_prompt_tokens_total") is None


def test_finish_outcome_names():
    assert [finish_outcome(r) for r in (generation_pb2.FINISH_REASON_STOP,
                                        generation_pb2.FINISH_REASON_LENGTH,
                                        generation_pb2.FINISH_REASON_ABORT)] == \
        ["stop", "length", "abort"]


def test_http_scrape_of_start_http():
    m = Metrics()
    m.observe_request("Generate", "abort", 1, 0, 0, None, 0.5, 0.1)
    server = m.start_http("127.0.0.1", free_port())
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain")
            body = reply.read().decode()
    finally:
        server.close()
    assert 'qnext_requests_total{method="Generate",outcome="abort"} 1.0' in body
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=1)


def test_async_serve_until_cancelled():
    async def main() -> str:
        m, port = Metrics(), free_port()
        task = asyncio.create_task(m.serve("127.0.0.1", port))
        await asyncio.sleep(0)  # serve binds before its first await
        url = f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return body.decode()

    assert "qnext_num_requests_running 0.0" in asyncio.run(main())


class FixedAdmin(admin_pb2_grpc.AdminServicer):
    """GetStats / GetMemory with fixed answers; the first `failures` calls fail UNAVAILABLE."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.calls = failures, 0

    async def _answer(self, reply, context):
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker restarting")
        return reply

    async def GetStats(self, request, context):
        return await self._answer(STATS, context)

    async def GetMemory(self, request, context):
        return await self._answer(MEMORY, context)


async def with_admin(servicer: FixedAdmin, body) -> None:
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await body(admin_pb2_grpc.AdminStub(channel))
    finally:
        await server.stop(None)


async def until(check, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


def test_poll_once_reads_the_worker():
    m = Metrics()

    async def body(stub) -> None:
        assert await poll_once(m, stub) is None

    asyncio.run(with_admin(FixedAdmin(), body))
    assert value(m, "qnext_num_requests_waiting") == 7
    assert value(m, "qnext_state_slots_free") == 17


def test_poll_once_failure_zeroes_the_queue_gauges():
    m = Metrics()
    m.update_from(STATS, MEMORY)

    async def body(stub) -> None:
        assert await poll_once(m, stub) == "UNAVAILABLE"

    asyncio.run(with_admin(FixedAdmin(failures=1), body))
    assert value(m, "qnext_num_requests_running") == 0
    assert value(m, "qnext_num_requests_waiting") == 0
    assert value(m, "qnext_kv_pages_used") == 1000  # the last known pools stay


def test_poll_worker_warns_once_per_outage_and_recovers():
    m = Metrics()
    servicer = FixedAdmin(failures=3)  # GetStats fails three polls in a row

    async def body(stub) -> None:
        task = asyncio.create_task(poll_worker(m, stub, interval=0.01))
        await until(lambda: value(m, "qnext_num_requests_running") == 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with capture_logs() as logs:
        asyncio.run(with_admin(servicer, body))
    events = [(e["event"], e["log_level"], e.get("code")) for e in logs]
    assert events.count(("metrics_poll_failed", "warning", "UNAVAILABLE")) == 1
    assert ("metrics_poll_recovered", "info", None) in events
    assert value(m, "qnext_prefix_cache_hit_rate") == 0.625
