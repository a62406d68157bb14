"""`WorkerClient`: the front end's channel to the worker daemon (Worker + Admin + health
stubs) and a watcher that mirrors the worker's health into the front end's own health
service. Torch-free."""

from __future__ import annotations

import asyncio

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qnext.v1 import admin_pb2_grpc, worker_pb2_grpc

log = structlog.get_logger()
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Reconnect within a second of a (re)started worker listening, not after gRPC's default
# backoff (up to 120 s): the worker is local or on the same network.
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]


class WorkerClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def wait_ready(self, timeout: float) -> None:
        """Until the worker reports SERVING (its health stream waits for it to come up);
        TimeoutError after `timeout` seconds."""
        try:
            async for reply in self.health.Watch(health_pb2.HealthCheckRequest(),
                                                 timeout=timeout, wait_for_ready=True):
                if reply.status == SERVING:
                    return
        except grpc.aio.AioRpcError as err:
            raise TimeoutError(f"the worker at {self.address} is not serving after "
                               f"{timeout:.0f} s ({err.code().name})") from err
        raise TimeoutError(f"the worker at {self.address} stopped before serving")

    async def mirror_health(self, set_status) -> None:
        """Forever: follow the worker's health stream and call set_status(status) on every
        change; NOT_SERVING while the worker is unreachable (reconnects with backoff; logs
        once per outage)."""
        backoff, reachable = 0.1, True
        while True:
            try:
                async for reply in self.health.Watch(health_pb2.HealthCheckRequest()):
                    if not reachable:
                        log.info("worker_reachable", address=self.address)
                    reachable, backoff = True, 0.1
                    await set_status(reply.status)
            except grpc.aio.AioRpcError as err:
                if reachable:
                    log.warning("worker_unreachable", address=self.address,
                                code=err.code().name)
                reachable = False
            await set_status(NOT_SERVING)
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, 2.0)

    async def close(self) -> None:
        await self.channel.close()
