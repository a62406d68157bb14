"""`qnext serve` (the gRPC front end, spawning its worker daemon or attaching to one) and
`qnext worker` (the daemon alone). The serve process stays torch-free: the engine runs in the
worker process; the front end learns the checkpoint path from the worker.

Admin token: `--admin-token` or QNEXT_ADMIN_TOKEN; without one a random token is written to
~/.cache/qnext/admin-token (mode 0600) and its path, never the token, is logged.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

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
    if engine_flags["node_rank"] > 0:  # no front end on the other nodes: their ranks only
        worker_args = ["--log-level", log_level, *o.flags_to_args(engine_flags)]
        worker_args += ["--model-path", str(model_path)] if model_path else []
        os.execv(sys.executable, [sys.executable, "-m", "qnext.cli.main", "worker",
                                  *worker_args])
    token = admin_token or _make_token()
    child, address, sock_dir = None, attach, None
    if attach is None:
        sock_dir = tempfile.mkdtemp(prefix="qnext-")
        address = f"unix:{sock_dir}/worker.sock"
        args = ["--listen", address, "--log-level", log_level, "--exit-with-parent",
                *o.flags_to_args(engine_flags)]
        args += ["--model-path", str(model_path)] if model_path else []
        child = subprocess.Popen([sys.executable, "-m", "qnext.cli.main", "worker", *args])
    from qnext_grpc.server import FrontendConfig, serve_frontend

    cfg = FrontendConfig(worker_address=address, model_path=str(model_path or ""), host=host,
                         port=port, admin_host=admin_host, admin_port=admin_port,
                         admin_token=token, metrics_port=metrics_port,
                         tls_cert=_str(tls_cert), tls_key=_str(tls_key),
                         tls_client_ca=_str(tls_client_ca))
    try:
        _run(serve_frontend(cfg), child=child)
    except (OSError, TimeoutError) as exc:
        fail(str(exc))
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            child.wait(timeout=30)
        if sock_dir is not None:
            shutil.rmtree(sock_dir, ignore_errors=True)
    if child is not None and child.returncode not in (0, -signal.SIGTERM):
        fail(f"the worker exited with code {child.returncode}")


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


def _run(coro, parent: int | None = None, child: subprocess.Popen | None = None) -> None:
    """Run `coro` until it ends, SIGTERM / SIGINT arrive, the parent process is gone, or the
    child (the spawned worker) exits."""
    async def main() -> None:
        task = asyncio.create_task(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        watch = asyncio.create_task(_watch(task, parent, child))
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            watch.cancel()

    asyncio.run(main())


async def _watch(task: asyncio.Task, parent: int | None, child) -> None:
    while not task.done():
        if (parent is not None and os.getppid() != parent) or \
                (child is not None and child.poll() is not None):
            task.cancel()
            return
        await asyncio.sleep(0.5)  # process liveness has no event to wait on
