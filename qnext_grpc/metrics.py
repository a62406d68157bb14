"""Prometheus metrics of the front end (`qnext_*`): per-request counters and latency histograms
observed by the front end, gauges refreshed from the worker's Admin `GetStats` / `GetMemory`,
and a `/metrics` HTTP endpoint. Each `Metrics` owns its registry (never the global one).
Torch-free."""

from __future__ import annotations

import asyncio
import threading
from wsgiref.simple_server import WSGIServer

import grpc
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest, start_http_server

from qnext.v1 import admin_pb2, generation_pb2

log = structlog.get_logger()

# Seconds. The first token waits for queueing and prefill; later tokens are one decode step
# apart (milliseconds), unless a preemption or a long prefill in the same batch stalls them.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
               0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
QUEUE_BUCKETS = TTFT_BUCKETS  # queueing is the first part of the time to first token


def finish_outcome(reason: int) -> str:
    """`generation_pb2.FinishReason` -> the `outcome` label: "stop", "length" or "abort"."""
    return generation_pb2.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()


class Metrics:
    """The `qnext_*` metric set in its own `CollectorRegistry`. Observers are thread-safe
    (prometheus_client locks each sample), so asyncio code and the HTTP thread may share it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, buckets=buckets, registry=self.registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=self.registry)

        self.requests = counter("qnext_requests_total", "Finished Generate / Stream calls, by "
                                "finish reason or gRPC status code name.", ("method", "outcome"))
        self.prompt_tokens = counter("qnext_prompt_tokens_total", "Prompt tokens of requests.")
        self.generation_tokens = counter("qnext_generation_tokens_total", "Tokens generated.")
        self.cached_tokens = counter("qnext_cached_prompt_tokens_total",
                                     "Prompt tokens reused from the prefix cache.")
        self.ttft = histogram("qnext_time_to_first_token_seconds",
                              "From arrival to the first generated token.", TTFT_BUCKETS)
        self.itl = histogram("qnext_inter_token_latency_seconds",
                             "Between consecutive generated tokens of a request.", ITL_BUCKETS)
        self.e2e = histogram("qnext_e2e_request_latency_seconds",
                             "From arrival to the end of a request.", E2E_BUCKETS)
        self.queue = histogram("qnext_request_queue_time_seconds",
                               "From arrival to admission into a running batch.", QUEUE_BUCKETS)
        self.running = gauge("qnext_num_requests_running", "Requests in a running batch.")
        self.waiting = gauge("qnext_num_requests_waiting", "Requests waiting for admission.")
        self.pages = {kind: gauge(f"qnext_kv_pages_{kind}", f"KV pages {doc}.")
                      for kind, doc in _POOL_DOCS}
        self.slots = {kind: gauge(f"qnext_state_slots_{kind}", f"State slots {doc}.")
                      for kind, doc in _POOL_DOCS}
        self.hit_rate = gauge("qnext_prefix_cache_hit_rate",
                              "Cached prompt tokens / prompt tokens since the worker started.")
        self.throughput = gauge("qnext_generation_throughput_tokens_per_second",
                                "Generated tokens per second over the last few seconds.")

    def observe_request(self, method: str, outcome: str, prompt_tokens: int,
                        completion_tokens: int, cached_tokens: int, ttft_s: float | None,
                        e2e_s: float, queue_s: float) -> None:
        """One finished call. `outcome`: `finish_outcome(reason)`, or the status code name
        of a failed call; `ttft_s` is None when no token was generated."""
        self.requests.labels(method=method, outcome=outcome).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.cached_tokens.inc(cached_tokens)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        self.e2e.observe(e2e_s)
        self.queue.observe(queue_s)

    def observe_token_gaps(self, gaps_s: list[float]) -> None:
        """Inter-token latencies of one request (seconds between consecutive tokens)."""
        for gap in gaps_s:
            self.itl.observe(gap)

    def update_from(self, stats: admin_pb2.Stats, memory: admin_pb2.MemoryInfo) -> None:
        """Refresh the gauges from the worker's Admin answers."""
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.hit_rate.set(stats.prefix_cache.hit_rate)
        self.throughput.set(stats.generation_throughput)
        for gauges, usage in ((self.pages, memory.pages), (self.slots, memory.state_slots)):
            for kind, _ in _POOL_DOCS:
                gauges[kind].set(getattr(usage, kind))

    def mark_worker_unreachable(self) -> None:
        """Nothing is known to run or wait while the worker does not answer."""
        self.running.set(0)
        self.waiting.set(0)

    def render(self) -> bytes:
        """The Prometheus text exposition format."""
        return generate_latest(self.registry)

    def start_http(self, host: str, port: int) -> MetricsServer:
        """Serve `/metrics` from a daemon thread (port 0: any free port)."""
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(httpd, thread)

    async def serve(self, host: str, port: int) -> None:
        """Serve `/metrics` until cancelled."""
        server = self.start_http(host, port)
        log.info("metrics_listening", address=f"{host}:{server.port}")
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.to_thread(server.close)


_POOL_DOCS = (("used", "held by running requests"), ("cached", "held by the prefix cache"),
              ("free", "free"))


class MetricsServer:
    """The running `/metrics` HTTP server; `close()` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self.httpd, self.thread = httpd, thread
        self.port: int = httpd.server_port

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


async def poll_once(metrics: Metrics, admin_stub, timeout: float = 5.0) -> str | None:
    """One `GetStats` + `GetMemory` from the worker into `metrics`. Returns None, or the status
    code name of a failed call (the running / waiting gauges then read 0)."""
    try:
        stats = await admin_stub.GetStats(admin_pb2.GetStatsRequest(), timeout=timeout)
        memory = await admin_stub.GetMemory(admin_pb2.GetMemoryRequest(), timeout=timeout)
    except grpc.RpcError as err:
        metrics.mark_worker_unreachable()
        return err.code().name
    metrics.update_from(stats, memory)
    return None


async def poll_worker(metrics: Metrics, admin_stub, interval: float = 2.0) -> None:
    """Refresh the worker gauges every `interval` seconds until cancelled; `admin_stub` is a
    grpc.aio `AdminStub` on the worker (no token). Warns once per outage."""
    failing = False
    while True:
        code = await poll_once(metrics, admin_stub, timeout=max(interval, 1.0))
        if code is not None and not failing:
            log.warning("metrics_poll_failed", code=code)
        elif code is None and failing:
            log.info("metrics_poll_recovered")
        failing = code is not None
        await asyncio.sleep(interval)
