"""`Supervisor`: `qnext serve`'s spawned worker daemon as a child process, restarted whenever it
dies (exponential backoff: 1 s doubling to 30 s, reset once a worker has served for 60 s),
given up after `max_restarts` restarts in a row. A watchdog kills (then restarts) a worker that
(with the processes below it, its TP ranks) serves but answers no heartbeat for
`watchdog_timeout` seconds: the heartbeat is an Admin GetStats, which the worker answers at a
step boundary, so a stuck step, a stuck process (SIGSTOP, a TP rank waiting forever) or a dead
engine all count. `serve_supervised` runs it
beside the front end and stops the worker when the front end ends. Torch-free."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import grpc
import structlog

from qnext.v1 import admin_pb2
from qnext_grpc.server import FrontendConfig, serve_frontend
from qnext_grpc.worker_client import WorkerClient

log = structlog.get_logger()
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0  # seconds before a restart
STABLE_AFTER = 60.0  # seconds of serving after which a worker's death starts a fresh count
READY_TIMEOUT = 24 * 3600.0  # how long a live worker may take to serve (it is loading)
HEARTBEAT_EVERY = 5.0  # seconds between heartbeats (less with a short watchdog timeout)


class WorkerFailed(RuntimeError):
    """The worker died and is not restarted (it never served, or the restarts ran out)."""


class Supervisor:
    """Starts the worker (`argv`, serving on `address`) and restarts it whenever it exits,
    until `terminate()` or `stop` is set. `max_restarts`: restarts in a row (-1: no limit);
    `watchdog_timeout`: seconds a serving worker may go without answering a heartbeat."""

    def __init__(self, argv: list[str], address: str, max_restarts: int,
                 stop: asyncio.Event, watchdog_timeout: float = 300.0) -> None:
        self.argv, self.address, self.max_restarts, self.stop = argv, address, max_restarts, stop
        self.watchdog_timeout = watchdog_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.closing = False
        self._ready_at: float | None = None  # when the current worker began serving

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
        self.proc = proc = await asyncio.create_subprocess_exec(*self.argv)
        self._ready_at = None
        log.info("worker_started", pid=proc.pid, address=self.address)
        keeper = asyncio.create_task(self._keep(proc))
        try:
            code = await proc.wait()
        finally:
            keeper.cancel()
        return code, None if self._ready_at is None else time.monotonic() - self._ready_at

    async def _keep(self, proc: asyncio.subprocess.Process) -> None:
        """Wait for `proc` to serve, note when, then watch its heartbeat."""
        client = WorkerClient(self.address)
        try:
            await client.wait_ready(READY_TIMEOUT)
            self._ready_at = time.monotonic()
            await self._watchdog(proc, client)
        finally:
            await client.close()

    async def _watchdog(self, proc: asyncio.subprocess.Process, client: WorkerClient) -> None:
        """Kill `proc` once it has answered no heartbeat for `watchdog_timeout` seconds (a
        late answer and an error count alike); returns after the kill."""
        limit = self.watchdog_timeout
        every = min(HEARTBEAT_EVERY, limit / 4)
        answered = time.monotonic()
        while (left := answered + limit - time.monotonic()) > 0:
            try:
                await client.admin.GetStats(admin_pb2.GetStatsRequest(), timeout=left)
                answered = time.monotonic()
            except grpc.aio.AioRpcError:
                pass  # late or refused: the silence goes on
            await asyncio.sleep(every)  # the heartbeat's period, not a wait for an event
        if self.done or proc.returncode is not None:
            return
        log.error("worker_hung", pid=proc.pid, silent_s=round(time.monotonic() - answered, 1),
                  watchdog_timeout_s=limit)
        below = _descendants(proc.pid)  # its TP ranks: a stopped one would outlive it
        proc.kill()
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

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


def _descendants(pid: int) -> list[int]:
    """The processes below `pid`, from Linux's /proc (none where it is missing)."""
    try:
        kids = [int(kid) for task in Path(f"/proc/{pid}/task").iterdir()
                for kid in (task / "children").read_text().split()]
    except OSError:
        return []
    return kids + [below for kid in kids for below in _descendants(kid)]


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
