"""`qnext serve` (the gRPC front end, spawning its worker daemon or attaching to one) and
`qnext worker` (the daemon alone). The serve process stays torch-free: the engine runs in the
worker process; the front end learns the checkpoint path from the worker.

Admin token: `--admin-token` or QNEXT_ADMIN_TOKEN; without one a random token is written to
~/.cache/qnext/admin-token (mode 0600) and its path, never the token, is logged.

Signals of `qnext serve`: SIGTERM drains (health NOT_SERVING, new calls UNAVAILABLE, running
ones get --graceful-shutdown-timeout seconds), then stops the worker and exits 0; a second
SIGTERM, or SIGINT (Ctrl-C, which reaches the worker too), stops at once. A spawned worker
that dies is restarted (qnext_grpc.supervisor), and so is one that answers no heartbeat for
--watchdog-timeout seconds; `qnext worker` stops at once on either signal.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated, NamedTuple, Optional

import typer

from qnext.cli import options as o
from qnext.cli.app import DEFAULT_TINY_DIR, app, fail, resolve_model_path

TOKEN_FILE = Path.home() / ".cache" / "qnext" / "admin-token"
LogLevel = Annotated[str, typer.Option(help="debug, info, warning or error.")]


@app.command()
@o.with_engine_flags
def worker(
    listen: Annotated[str, typer.Option(help="host:port or unix:/path to serve on.")] =
    "127.0.0.1:50060",
    model_path: o.ModelPath = None, log_level: LogLevel = "info",
    exit_with_parent: Annotated[bool, typer.Option(hidden=True)] = False,
    *, engine_flags: dict,
) -> None:
    """Run the worker daemon alone: the engine behind the internal channel."""
    from qnext_grpc.logging import configure_server_logging

    configure_server_logging(log_level)
    path = resolve_model_path(model_path)
    try:
        cfg = o.build_config(path, **engine_flags)
        if cfg.parallel.node_rank > 0:  # no engine here: this node's TP ranks only
            from qnext.worker.engine.tp import run_node

            raise typer.Exit(code=run_node(cfg))
        from qnext.worker.engine import Engine

        engine = Engine(cfg)
    except ValueError as exc:  # ConfigError, MemoryPlanError, CheckpointError
        fail(str(exc))
    from qnext_grpc.worker_service import serve_worker

    _run(serve_worker(engine, listen), parent=os.getppid() if exit_with_parent else None)


@app.command()
@o.with_engine_flags
def serve(
    model_path: o.ModelPath = None,
    host: Annotated[str, typer.Option(help="Data-plane address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Data-plane port (Generation).")] = 50051,
    admin_host: Annotated[str, typer.Option(help="Control-plane address.")] = "127.0.0.1",
    admin_port: Annotated[int, typer.Option(help="Control-plane port (Admin).")] = 50052,
    admin_token: Annotated[Optional[str], typer.Option(
        envvar="QNEXT_ADMIN_TOKEN", help="Bearer token for Admin calls.")] = None,
    attach: Annotated[Optional[str], typer.Option(
        "--worker", help="Attach to a running worker (host:port or unix:/path).")] = None,
    log_level: LogLevel = "info",
    metrics_port: Annotated[Optional[int], typer.Option(
        help="Serve Prometheus /metrics on this port (on --host).")] = None,
    tls_cert: Annotated[Optional[Path], typer.Option(help="PEM certificate: TLS on both ports.")]
    = None,
    tls_key: Annotated[Optional[Path], typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[Optional[Path], typer.Option(
        help="PEM CA: require client certificates it signed (mTLS).")] = None,
    worker_max_restarts: Annotated[int, typer.Option(
        help="Restarts in a row of a spawned worker that died before the front end exits "
             "(-1: no limit; the count resets once a worker has served 60 s).")] = 5,
    graceful_shutdown_timeout: Annotated[float, typer.Option(
        help="On SIGTERM: seconds running calls get to finish before they are cancelled.")]
    = 30.0,
    watchdog_timeout: o.WatchdogTimeout = 300.0,
    *, engine_flags: dict,
) -> None:
    """Serve over gRPC: Generation on --port, Admin on --admin-port (token-protected)."""
    from qnext_grpc.logging import configure_server_logging

    configure_server_logging(log_level)
    try:
        o.build_sections(model_path or DEFAULT_TINY_DIR, **engine_flags)
    except ValueError as exc:  # a bad flag fails here, before anything starts
        fail(str(exc))
    _check_tls(tls_cert, tls_key, tls_client_ca)
    _check_shutdown(worker_max_restarts, graceful_shutdown_timeout, watchdog_timeout)
    if engine_flags["node_rank"] > 0:  # no front end on the other nodes: their ranks only
        os.execv(sys.executable, _worker_argv(log_level, model_path, engine_flags))
    token = admin_token or _make_token()
    from qnext_grpc.server import FrontendConfig

    sock_dir = None if attach else tempfile.mkdtemp(prefix="qnext-")
    cfg = FrontendConfig(worker_address=attach or f"unix:{sock_dir}/worker.sock",
                         model_path=str(model_path or ""), host=host, port=port,
                         admin_host=admin_host, admin_port=admin_port, admin_token=token,
                         metrics_port=metrics_port, tls_cert=_str(tls_cert),
                         tls_key=_str(tls_key), tls_client_ca=_str(tls_client_ca),
                         shutdown_grace=graceful_shutdown_timeout)
    worker_argv = None if attach else _worker_argv(
        log_level, model_path, engine_flags, "--listen", cfg.worker_address, "--exit-with-parent")
    try:
        _serve(cfg, worker_argv, worker_max_restarts, watchdog_timeout)
    finally:
        if sock_dir is not None:
            shutil.rmtree(sock_dir, ignore_errors=True)


def _worker_argv(log_level: str, model_path: Path | None, engine_flags: dict,
                 *extra: str) -> list[str]:
    """The command line of `qnext worker` with serve's engine flags."""
    args = ["--log-level", log_level, *o.flags_to_args(engine_flags), *extra]
    args += ["--model-path", str(model_path)] if model_path else []
    return [sys.executable, "-m", "qnext.cli.main", "worker", *args]


def _serve(cfg, worker_argv: list[str] | None, max_restarts: int, watchdog: float) -> None:
    """The front end alone (attached) or beside its supervised worker; SIGTERM drains."""
    from qnext_grpc.server import serve_frontend
    from qnext_grpc.supervisor import Supervisor, WorkerFailed, serve_supervised

    phases = Phases(asyncio.Event(), asyncio.Event())
    try:
        if worker_argv is None:
            _run(serve_frontend(cfg, *phases), phases=phases)
        else:
            supervisor = Supervisor(worker_argv, cfg.worker_address, max_restarts, phases.stop,
                                    watchdog)
            _run(serve_supervised(cfg, supervisor, *phases), phases=phases)
    except (OSError, TimeoutError, WorkerFailed) as exc:
        fail(str(exc))


def _check_shutdown(max_restarts: int, grace: float, watchdog: float) -> None:
    if max_restarts < -1:
        fail(f"--worker-max-restarts must be >= -1 (-1: no limit), got {max_restarts}")
    if not grace >= 0:
        fail(f"--graceful-shutdown-timeout must be >= 0, got {grace}")
    if not 0 < watchdog < float("inf"):
        fail(f"--watchdog-timeout must be a positive number of seconds, got {watchdog}")


def _check_tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> None:
    if (cert is None) != (key is None):
        fail("--tls-cert and --tls-key go together")
    if client_ca is not None and cert is None:
        fail("--tls-client-ca needs --tls-cert and --tls-key")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None and not path.is_file():
            fail(f"{flag} {path}: no such file")


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _make_token() -> str:
    token = secrets.token_urlsafe(24)
    TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    TOKEN_FILE.touch(mode=0o600)
    TOKEN_FILE.write_text(token)
    import structlog

    structlog.get_logger().info("admin_token_written", path=str(TOKEN_FILE))
    return token


class Phases(NamedTuple):
    """A front end's events: `started` (it listens) and `stop` (SIGTERM: drain, then return)."""

    started: asyncio.Event
    stop: asyncio.Event


def _run(coro, parent: int | None = None, phases: Phases | None = None) -> None:
    """Run `coro` until it ends or the parent process is gone. SIGINT cancels it. SIGTERM
    sets `phases.stop` once `phases.started` is; before that, on a second SIGTERM, or
    without `phases`, it cancels."""
    async def main() -> None:
        task = asyncio.create_task(coro)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, task.cancel)
        loop.add_signal_handler(signal.SIGTERM, _on_sigterm, task, phases)
        watch = asyncio.create_task(_watch(task, parent))
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            watch.cancel()

    asyncio.run(main())


def _on_sigterm(task: asyncio.Task, phases: Phases | None) -> None:
    if phases is None or phases.stop.is_set() or not phases.started.is_set():
        task.cancel()
    else:
        phases.stop.set()


async def _watch(task: asyncio.Task, parent: int | None) -> None:
    while parent is not None and not task.done():
        if os.getppid() != parent:
            task.cancel()
            return
        await asyncio.sleep(0.5)  # process liveness has no event to wait on
