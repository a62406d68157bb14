"""The front end: the data-plane server (Generation + health + reflection) and the separate
control-plane server (Admin, token-protected, + health + reflection), both grpc.aio, in front
of one worker daemon. Health is NOT_SERVING until the worker serves, and whenever it is
unreachable. With a certificate both ports speak TLS (mTLS with a client CA). Asked to stop,
it drains: health NOT_SERVING, new Generation calls refused (UNAVAILABLE), running ones given a
grace period, then cancelled. Torch-free."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from qnext.v1 import admin_pb2, admin_pb2_grpc, generation_pb2, generation_pb2_grpc
from qnext_grpc.errors import ErrorInterceptor
from qnext_grpc.generation import GenerationService
from qnext_grpc.admission import Admission
from qnext_grpc.logging import RequestLogInterceptor, configure_server_logging
from qnext_grpc.metrics import Metrics, poll_worker
from qnext_grpc.text import TextTokenizer
from qnext_grpc.worker_client import WorkerClient

log = structlog.get_logger()
GENERATION = generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")  # no token needed


@dataclass(frozen=True)
class FrontendConfig:
    worker_address: str
    model_path: str = ""  # for the tokenizer; empty: the worker's checkpoint
    host: str = "127.0.0.1"
    port: int = 50051
    admin_host: str = "127.0.0.1"
    admin_port: int = 50052
    admin_token: str = ""
    worker_timeout: float = 600.0  # how long to wait for the worker to serve at start
    metrics_port: int | None = None  # Prometheus /metrics on `host`; None: not served
    tls_cert: str | None = None  # PEM files: with cert + key both ports speak TLS only
    tls_key: str | None = None
    tls_client_ca: str | None = None  # also require client certificates signed by this CA
    shutdown_grace: float = 30.0  # on `stop`: seconds running calls get to finish


def _credentials(cfg: FrontendConfig) -> grpc.ServerCredentials | None:
    if cfg.tls_cert is None:
        return None
    pair = (Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())
    ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca,
                                       require_client_auth=ca is not None)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Admin calls need `authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_METHODS):
            return await continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return await continuation(details)
        return grpc.unary_unary_rpc_method_handler(_deny)


async def _deny(request, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong admin token")


class AdminProxy(admin_pb2_grpc.AdminServicer):
    """Every Admin RPC forwarded to the worker (which serves Admin without auth)."""

    def __init__(self, worker: WorkerClient) -> None:
        self.worker = worker

    async def SetLogLevel(self, request, context):
        """The worker's level (it validates the name), then the front end's own."""
        reply = await self.worker.admin.SetLogLevel(request, timeout=context.time_remaining())
        configure_server_logging(request.level)
        return reply


def _forward(name: str):
    async def method(self, request, context):
        return await getattr(self.worker.admin, name)(request, timeout=context.time_remaining())
    method.__name__ = name
    return method


for _method in admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods:
    if _method.name not in vars(AdminProxy):
        setattr(AdminProxy, _method.name, _forward(_method.name))


def _server(interceptors, address: str, creds: grpc.ServerCredentials | None) -> grpc.aio.Server:
    server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    port = (server.add_insecure_port(address) if creds is None
            else server.add_secure_port(address, creds))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server


async def serve_frontend(cfg: FrontendConfig, started: asyncio.Event | None = None,
                         stop: asyncio.Event | None = None) -> None:
    """Serve until cancelled (then stop at once) or until `stop` is set: then drain (health
    NOT_SERVING, new Generation calls refused with UNAVAILABLE, running ones given
    `cfg.shutdown_grace` seconds to finish, the rest cancelled) and return."""
    worker = WorkerClient(cfg.worker_address)
    try:
        await worker.wait_ready(cfg.worker_timeout)
        tokenizer = TextTokenizer.from_dir(cfg.model_path or (await worker.admin.GetServerInfo(
            admin_pb2.GetServerInfoRequest())).model_path)
        frontend = _Frontend(cfg, worker, tokenizer)
        await frontend.serve(started, stop or asyncio.Event())
    finally:
        await worker.close()


class _Frontend:
    """The two servers, their health services and the background tasks of one front end."""

    def __init__(self, cfg: FrontendConfig, worker: WorkerClient, tokenizer) -> None:
        self.cfg, self.worker, self.metrics = cfg, worker, Metrics()
        self.admission = Admission(f"/{GENERATION}/Generate", f"/{GENERATION}/Stream")
        creds = _credentials(cfg)
        self.data = _server([RequestLogInterceptor(), ErrorInterceptor(), self.admission],
                            f"{cfg.host}:{cfg.port}", creds)
        self.control = _server([TokenAuth(cfg.admin_token), RequestLogInterceptor(),
                                ErrorInterceptor()], f"{cfg.admin_host}:{cfg.admin_port}", creds)
        generation_pb2_grpc.add_GenerationServicer_to_server(
            GenerationService(worker, tokenizer, self.metrics), self.data)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminProxy(worker), self.control)
        self.healths = [health.aio.HealthServicer(), health.aio.HealthServicer()]
        for server, servicer, name in self._planes():
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
            reflection.enable_server_reflection(
                (name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    def _planes(self):
        return zip((self.data, self.control), self.healths, (GENERATION, ADMIN))

    async def set_status(self, status) -> None:
        for _, servicer, name in self._planes():
            await servicer.set("", status)
            await servicer.set(name, status)

    async def serve(self, started: asyncio.Event | None, stop: asyncio.Event) -> None:
        cfg = self.cfg
        await self.set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.data.start()
        await self.control.start()
        mirror = asyncio.create_task(self.worker.mirror_health(self.set_status))
        tasks = [mirror]
        if cfg.metrics_port is not None:
            tasks += [asyncio.create_task(self.metrics.serve(cfg.host, cfg.metrics_port)),
                      asyncio.create_task(poll_worker(self.metrics, self.worker.admin))]
        log.info("frontend_listening", data=f"{cfg.host}:{cfg.port}",
                 control=f"{cfg.admin_host}:{cfg.admin_port}", worker=cfg.worker_address)
        if started is not None:
            started.set()
        try:
            await stop.wait()
            mirror.cancel()  # health stops following the worker
            await self._drain()
        finally:
            for task in tasks:
                task.cancel()
            for servicer in self.healths:
                await servicer.enter_graceful_shutdown()
            await asyncio.gather(self.data.stop(grace=0), self.control.stop(grace=0),
                                 return_exceptions=True)  # stop() may raise CancelledError

    async def _drain(self) -> None:
        """Refuse new calls, NOT_SERVING for good, wait for the running ones (up to the
        grace period)."""
        self.admission.close()
        for servicer in self.healths:
            await servicer.enter_graceful_shutdown()
        grace = self.cfg.shutdown_grace
        log.info("draining", in_flight=self.admission.in_flight, grace_s=grace)
        try:
            await asyncio.wait_for(self.admission.idle.wait(), grace)
            log.info("drained")
        except TimeoutError:
            log.warning("drain_timeout", cancelled=self.admission.in_flight)
