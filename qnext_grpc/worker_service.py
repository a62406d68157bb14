"""The worker daemon's gRPC side: `qnext.v1.Worker` (token-id generation) and `qnext.v1.Admin`
(no auth here: the front end checks the token) over the engine bridge, plus grpc.health.v1.
`serve_worker` serves an engine until stopped, or until its engine thread dies: then the
process exits with code 1 (`EngineFailed`) for its supervisor to restart it. Strategy switches
and resizes run at a step boundary (`Engine.reconfigure`): running requests are retracted and
recomputed, none lost."""

from __future__ import annotations

import asyncio
import json
import platform
from dataclasses import asdict

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import qnext
from qnext.v1 import admin_pb2, admin_pb2_grpc, generation_pb2 as gen, worker_pb2
from qnext.v1 import worker_pb2_grpc
from qnext_grpc import convert
from qnext_grpc.bridge import EngineBridge
from qnext.worker.engine.reconfigure import ReconfigureConflict
from qnext.worker.sched.cache import IntegrityError
from qnext_grpc.errors import Conflict, ErrorInterceptor
from qnext_grpc.logging import QUIET_METHODS, RequestLogInterceptor, configure_server_logging

log = structlog.get_logger()
LEVELS = ("debug", "info", "warning", "error")
_STRATEGIES = {admin_pb2.RADIX_STRATEGY_OFF: "off", admin_pb2.RADIX_STRATEGY_NO_BUFFER: "no_buffer",
               admin_pb2.RADIX_STRATEGY_EXTRA_BUFFER: "extra_buffer"}


class EngineFailed(SystemExit):
    """The engine thread died: `serve_worker` raises this (exit code 1, no second traceback;
    the failure is logged as `engine_failed`) after health went NOT_SERVING and the calls in
    flight ended with UNAVAILABLE, so the process ends and its supervisor restarts it."""

    def __init__(self) -> None:
        super().__init__(1)


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, bridge: EngineBridge) -> None:
        self.bridge = bridge

    async def Generate(self, request, context):
        events = await self.bridge.submit(convert.request_from_pb(request))
        finished = False
        try:
            async for ev in events:
                finished = ev.finish_reason is not None
                yield worker_pb2.WorkerEvent(
                    token_ids=ev.token_ids,
                    logprobs=convert.logprobs_pb(ev.token_ids, ev.logprobs, ev.top_logprobs)
                    if request.logprobs.enabled else [],
                    finish_reason=convert.finish_reason_pb(ev.finish_reason),
                    cached_tokens=ev.cached_tokens, queue_ms=ev.queue_ms)
        finally:
            if not finished:  # cancelled, deadline, or the stream broke: free its resources
                self.bridge.forget(request.request_id)

    async def Abort(self, request, context):
        done = await self.bridge.abort_now(list(request.request_ids))
        return gen.AbortResponse(
            aborted=[r for r, ok in zip(request.request_ids, done) if ok],
            not_found=[r for r, ok in zip(request.request_ids, done) if not ok])


class WorkerAdmin(admin_pb2_grpc.AdminServicer):
    def __init__(self, bridge: EngineBridge) -> None:
        self.bridge = bridge

    async def GetStats(self, request, context):
        stats = await self.bridge.call(lambda e: e.stats())
        return convert.stats_pb(stats, self.bridge.throughput(), self.bridge.draining)

    async def GetMemory(self, request, context):
        return await self.bridge.call(_memory)

    async def SetRadixStrategy(self, request, context):
        strategy = _STRATEGIES.get(request.strategy)
        if strategy is None:
            raise ValueError("strategy: set one of OFF, NO_BUFFER, EXTRA_BUFFER")
        await self._reconfigure(strategy=strategy)
        return await self.bridge.call(_memory)

    async def ResizeMambaCache(self, request, context):
        target = request.WhichOneof("target")
        if target is None:
            raise ValueError("target: set ratio or num_slots")
        changes = {target: getattr(request, target), "dry_run": request.dry_run}
        if request.dry_run:
            plan, _ = await self.bridge.call(lambda e: e.reconfigure(**changes))
            return admin_pb2.ResizeMambaCacheResponse(memory=_planned(plan, changes),
                                                      applied=False)
        await self._reconfigure(**changes)
        return admin_pb2.ResizeMambaCacheResponse(memory=await self.bridge.call(_memory),
                                                  applied=True)

    async def _reconfigure(self, **changes) -> None:
        try:
            await self.bridge.reconfigure(**changes)
        except ReconfigureConflict as err:
            raise Conflict(str(err)) from err

    async def FlushCache(self, request, context):
        pages, slots = await self.bridge.call(lambda engine: engine.flush_cache())
        return admin_pb2.FlushCacheResponse(freed_pages=pages, freed_slots=slots)

    async def Drain(self, request, context):
        self.bridge.draining = True
        left = await self.bridge.call(
            lambda e: len(e.scheduler.running) + len(e.scheduler.waiting))
        return admin_pb2.DrainResponse(num_unfinished=left)

    async def Resume(self, request, context):
        self.bridge.draining = False
        return admin_pb2.ResumeResponse()

    async def GetServerInfo(self, request, context):
        return await self.bridge.call(_server_info)

    async def SetLogLevel(self, request, context):
        if request.level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {request.level!r}")
        configure_server_logging(request.level)
        return admin_pb2.SetLogLevelResponse()

    async def CheckIntegrity(self, request, context):
        return await self.bridge.call(_integrity)


def _memory(engine) -> admin_pb2.MemoryInfo:
    return convert.memory_pb(engine.memory.describe(), engine.pool_usage(), engine.strategy,
                             engine.cfg.cache.mamba_full_memory_ratio)


def _integrity(engine) -> admin_pb2.CheckIntegrityResponse:
    """`engine.check_integrity()` and the pool counters, at the same step boundary."""
    try:
        error, idle = "", engine.check_integrity()
    except IntegrityError as err:
        error, idle = str(err) or type(err).__name__, False
        log.error("integrity_violation", error=error)
    return convert.integrity_pb(error, idle, engine.pool_usage())


def _planned(plan, changes: dict) -> admin_pb2.MemoryInfo:
    """What a dry run would give: the plan's sizes, every unit free."""
    def empty(total: int) -> dict:
        return dict(total=total, used=0, cached=0, evictable=0, free=total)
    usage = {"pages": empty(plan.num_pages - 1), "state_slots": empty(plan.num_state_slots - 1)}
    info = convert.memory_pb(plan.describe(), usage, "", changes.get("ratio") or 0.0)
    return info


def _server_info(engine) -> admin_pb2.ServerInfo:
    import torch
    import transformers

    cfg = engine.cfg
    return admin_pb2.ServerInfo(
        model_path=cfg.load.model_path or "", architecture=cfg.model.architecture,
        version=qnext.__version__, device=cfg.load.device,
        versions={"torch": torch.__version__, "transformers": transformers.__version__,
                  "grpcio": grpc.__version__, "python": platform.python_version()},
        config_json=json.dumps(asdict(cfg), default=str))


async def serve_worker(engine, address: str, ready: asyncio.Event | None = None) -> None:
    """Serve `engine` on `address` ("unix:/path" or "host:port") until cancelled. If the
    engine thread dies: health NOT_SERVING, the calls in flight end (UNAVAILABLE), the server
    stops, then `EngineFailed` is raised (the process exits 1)."""
    bridge = EngineBridge(engine)
    bridge.start()
    # GetStats is the supervisor's heartbeat (every few seconds): its lines go to debug
    quiet = RequestLogInterceptor(QUIET_METHODS + ("/qnext.v1.Admin/GetStats",))
    server = grpc.aio.server(interceptors=[quiet, ErrorInterceptor()],
                             options=[("grpc.so_reuseport", 0)])
    worker_pb2_grpc.add_WorkerServicer_to_server(WorkerService(bridge), server)
    admin_pb2_grpc.add_AdminServicer_to_server(WorkerAdmin(bridge), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(address) == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("worker_listening", address=address)
    if ready is not None:
        ready.set()
    try:
        await bridge.failed.wait()  # until cancelled, or the engine thread dies
        log.error("worker_exiting", reason="the engine failed", exit_code=1)
    finally:
        try:  # server.stop raises CancelledError when requests are still running
            await health_servicer.enter_graceful_shutdown()
            await server.stop(grace=5 if bridge.error is None else 1)
        finally:  # the engine thread must stop before the interpreter does
            bridge.stop()
            engine.close()  # the other TP ranks
    raise EngineFailed() from bridge.error
