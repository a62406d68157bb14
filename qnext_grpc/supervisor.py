"""`Supervisor`: `qnext serve`'s spawned worker daemon as a child process, restarted whenever it
dies (exponential backoff: 1 s doubling to 30 s, reset once a worker has served for 60 s),
given up after `max_restarts` restarts in a row. `serve_supervised` runs it beside the front
end and stops the worker when the front end ends. Torch-free."""

from __future__ import annotations

import asyncio
import time

import structlog

from qnext_grpc.server import FrontendConfig, serve_frontend
from qnext_grpc.worker_client import WorkerClient

log = structlog.get_logger()
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0  # seconds before a restart
STABLE_AFTER = 60.0  # seconds of serving after which a worker's death starts a fresh count
READY_TIMEOUT = 24 * 3600.0  # how long a live worker may take to serve (it is loading)


class WorkerFailed(RuntimeError):
    """The worker died and is not restarted (it never served, or the restarts ran out)."""


class Supervisor:
    """Starts the worker (`argv`, serving on `address`) and restarts it whenever it exits,
    until `terminate()` or `stop` is set. `max_restarts`: restarts in a row (-1: no limit)."""

    def __init__(self, argv: list[str], address: str, max_restarts: int,
                 stop: asyncio.Event) -> None:
        self.argv, self.address, self.max_restarts, self.stop = argv, address, max_restarts, stop
        self.proc: asyncio.subprocess.Process | None = None
        self.closing = False

    @property
    def done(self) -> bool:
        return self.closing or self.stop.is_set()

    async def run(self) -> None:
        """Returns once the worker exits after `stop` is set; raises WorkerFailed when the
        first worker exits before serving, or when a worker exits with no restart left."""
        restarts, backoff, served_before = 0, BACKOFF_FIRST, False
        while not self.done:
            code, served = await self._lifetime()
            if self.done:
                return
            if served is None and not served_before:
                raise WorkerFailed(f"the worker exited with code {code}")
            served_before = True
            if served is not None and served >= STABLE_AFTER:
                restarts, backoff = 0, BACKOFF_FIRST
            if restarts == self.max_restarts:
                raise WorkerFailed(f"the worker exited with code {code}; gave up after "
                                   f"{restarts} restarts (--worker-max-restarts)")
            restarts += 1
            log.warning("worker_exited", exit_code=code, restart=restarts, restart_in_s=backoff)
            await asyncio.sleep(backoff)  # the backoff itself, not a wait for an event
            backoff = min(2 * backoff, BACKOFF_MAX)

    async def _lifetime(self) -> tuple[int, float | None]:
        """Start one worker and wait for its exit: (exit code, seconds it served or None)."""
        self.proc = await asyncio.create_subprocess_exec(*self.argv)
        log.info("worker_started", pid=self.proc.pid, address=self.address)
        ready = asyncio.create_task(self._serving_since())
        try:
            code = await self.proc.wait()
        finally:
            ready.cancel()
        served = ready.done() and not ready.cancelled() and ready.exception() is None
        return code, time.monotonic() - ready.result() if served else None

    async def _serving_since(self) -> float:
        client = WorkerClient(self.address)
        try:
            await client.wait_ready(READY_TIMEOUT)
            return time.monotonic()
        finally:
            await client.close()

    async def terminate(self, timeout: float = 30.0) -> None:
        """No more restarts; SIGTERM the worker, SIGKILL it after `timeout` seconds."""
        self.closing = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("worker_killed", pid=proc.pid, after_s=timeout)
            proc.kill()
            code = await proc.wait()
        log.info("worker_stopped", pid=proc.pid, exit_code=code)


async def serve_supervised(cfg: FrontendConfig, supervisor: Supervisor, started: asyncio.Event,
                           stop: asyncio.Event) -> None:
    """`serve_frontend(cfg, started, stop)` beside its supervised worker; raises WorkerFailed
    when the worker is given up. The worker is stopped on the way out."""
    keeper = asyncio.create_task(supervisor.run())
    frontend = asyncio.create_task(serve_frontend(cfg, started, stop))
    try:
        await asyncio.wait({keeper, frontend}, return_when=asyncio.FIRST_COMPLETED)
        if keeper.done() and keeper.exception() is not None:
            raise keeper.exception()
        await frontend
    finally:
        for task in (keeper, frontend):
            task.cancel()
        await asyncio.gather(keeper, frontend, return_exceptions=True)
        await supervisor.terminate()
