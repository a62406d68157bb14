"""Real qnext processes on 127.0.0.1 for end-to-end tests: `qnext serve` (spawning its worker)
or `qnext worker` + `qnext serve --worker`, with readiness taken from grpc.health.v1 Watch
streams (no sleeps), and clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qnext.v1 import admin_pb2

from tests.net import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING


def qnext(*args: str, log: Path, home: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"HOME": str(home)} if home else {})}
    env.pop("QNEXT_ADMIN_TOKEN", None)
    return subprocess.Popen([sys.executable, "-m", "qnext.cli.main", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


def channel(address: str, creds: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    return grpc.insecure_channel(address) if creds is None else grpc.secure_channel(address,
                                                                                     creds)


def wait_for_status(address: str, status: int, proc: subprocess.Popen, log: Path,
                    timeout: float = 120.0, service: str = "",
                    creds: grpc.ChannelCredentials | None = None) -> None:
    """Follow the health Watch stream of `address` until `status` (the stream itself waits
    for the server to come up: wait_for_ready)."""
    with channel(address, creds) as channel_:
        stub = health_pb2_grpc.HealthStub(channel_)
        try:
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service=service),
                                    timeout=timeout, wait_for_ready=True):
                if reply.status == status:
                    return
        except grpc.RpcError as err:
            raise RuntimeError(f"{address} never reached {status} ({err.code().name}); "
                               f"exit {proc.poll()}; log:\n{log.read_text()[-3000:]}") from err


def serve_config(model_path: Path, **flags):
    """The Config `qnext serve` gives its worker: the engine flags' defaults, then `flags`."""
    from qnext.cli import options as o

    defaults = {name: default for name, _, default in o.ENGINE_FLAGS}
    return o.build_config(model_path, **{**defaults, **flags})


class Server:
    """`qnext serve` on free ports (no model: the embedded tiny one); `worker`: attach to that
    address instead of spawning; `creds`: how clients reach a TLS server; `home`: $HOME."""

    def __init__(self, model_path: Path | None, *flags: str, worker: str | None = None,
                 creds: grpc.ChannelCredentials | None = None, home: Path | None = None) -> None:
        self.port, self.admin_port, self.token = free_port(), free_port(), "e2e-secret-token"
        self.log = Path(tempfile.mkstemp(prefix="qnext-serve-", suffix=".log")[1])
        args = ["serve", "--port", str(self.port), "--admin-port", str(self.admin_port),
                "--admin-token", self.token, *flags]
        args += ["--model-path", str(model_path)] if model_path else []
        args += ["--worker", worker] if worker else []
        self.proc = qnext(*args, log=self.log, home=home)
        wait_for_status(self.address, SERVING, self.proc, self.log, creds=creds)
        self.data = channel(self.address, creds)
        self.control = channel(f"127.0.0.1:{self.admin_port}", creds)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def auth(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]

    def stop(self) -> int:
        self.data.close()
        self.control.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        if code == 0:
            self.log.unlink(missing_ok=True)
        return code


class Worker:
    """`qnext worker` alone on a free port."""

    def __init__(self, model_path: Path, *flags: str, address: str | None = None) -> None:
        self.address = address or f"127.0.0.1:{free_port()}"
        self.log = Path(tempfile.mkstemp(prefix="qnext-worker-", suffix=".log")[1])
        self.proc = qnext("worker", "--model-path", str(model_path), "--listen", self.address,
                          *flags, log=self.log)
        wait_for_status(self.address, SERVING, self.proc, self.log)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.unlink(missing_ok=True)


def until(condition, timeout: float = 20.0) -> None:
    """Poll `condition()` (an RPC) until true; fail after `timeout` seconds."""
    deadline, pause = time.monotonic() + timeout, threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        pause.wait(0.05)


def idle(admin, auth) -> bool:
    mem = admin.GetMemory(admin_pb2.GetMemoryRequest(), metadata=auth)
    stats = admin.GetStats(admin_pb2.GetStatsRequest(), metadata=auth)
    return (mem.pages.used == 0 and mem.state_slots.used == 0 and stats.num_running == 0
            and stats.num_waiting == 0)


def integrity(admin, auth) -> admin_pb2.CheckIntegrityResponse:
    """Admin CheckIntegrity; fails the test with the server's message on a violation."""
    report = admin.CheckIntegrity(admin_pb2.CheckIntegrityRequest(), metadata=auth, timeout=30)
    assert report.ok, f"pool integrity violated: {report.message}"
    return report


def all_free(admin, auth, flush: bool = True) -> bool:
    """Whether every KV page and state slot is free, after dropping the cached prefixes when
    `flush` (the server must be idle then, so the idle checks ran too). Either way the
    allocators' and the prefix cache's integrity checks must pass (Admin CheckIntegrity): a
    violation fails the test at once."""
    if flush:
        admin.FlushCache(admin_pb2.FlushCacheRequest(), metadata=auth, timeout=30)
    report = integrity(admin, auth)
    assert report.idle or not flush, "not idle: the idle integrity checks did not run"
    return all(pool.free == pool.total > 0 and pool.used == pool.cached == pool.evictable == 0
               for pool in (report.pages, report.state_slots))
