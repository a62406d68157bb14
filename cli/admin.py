"""`qnext-admin`: the control-plane CLI, a synchronous client of the `qnext.v1.Admin` gRPC service
and of `grpc.health.v1`. It never imports torch or the worker; grpc and the stubs are imported
inside the commands so `--help` stays instant. Global options go before the command
(`qnext-admin --json stats`). Exit codes: 0 ok, 1 health not SERVING or an integrity violation,
2 bad input or a gRPC error (one line on stderr: `error: <CODE>: <details>`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

import qnext
from qnext.cli import admin_format as fmt
from qnext.cli.channels import open_channel

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message

EPILOG = ("Global options go before the command: qnext-admin --json stats. Exit codes: 0 ok; "
          "1 health is not SERVING, or check found a violation; 2 bad input or a gRPC error, "
          "printed as 'error: <CODE>: <details>' (UNAUTHENTICATED, UNAVAILABLE, INVALID_ARGUMENT, "
          "FAILED_PRECONDITION, DEADLINE_EXCEEDED, ...).")

app = typer.Typer(help="qnext-admin: inspect and control a running qnext server.",
                  epilog=EPILOG, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)

STRATEGIES = ("off", "no_buffer", "extra_buffer")
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_UINT32 = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and how to call: the global options, set once by the callback."""

    addr: str
    token: str | None
    as_json: bool
    timeout: float
    tls_ca: Path | None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata: the bearer token when one is set."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit (2 unless told)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=code)


def _open_channel(target: Target) -> grpc.Channel:
    try:
        return open_channel(target.addr, target.tls_ca)
    except ValueError as err:  # an unreadable --tls-ca
        fail(str(err))


def _call(ctx: typer.Context, method: str, request: Message, *, health: bool = False) -> Any:
    """One unary RPC on the Admin service (or Health) with the deadline and the token; a gRPC
    error becomes `error: CODE: details` and exit 2."""
    import grpc
    from grpc_health.v1 import health_pb2_grpc

    from qnext.v1 import admin_pb2_grpc

    target: Target = ctx.obj
    with _open_channel(target) as channel:
        stub = (health_pb2_grpc.HealthStub if health else admin_pb2_grpc.AdminStub)(channel)
        try:
            return getattr(stub, method)(request, timeout=target.timeout,
                                         metadata=target.metadata())
        except grpc.RpcError as err:
            details = " ".join((err.details() or "").split())  # type: ignore[attr-defined]
            fail(f"{err.code().name}: {details}")  # type: ignore[attr-defined]


def _show(ctx: typer.Context, message: Message, text: Callable[[Any], str]) -> None:
    """`--json`: the message as one JSON document; otherwise the readable text."""
    typer.echo(fmt.to_json(message) if ctx.obj.as_json else text(message))


@app.callback()
def main(
    ctx: typer.Context,
    addr: Annotated[str, typer.Option(envvar="QNEXT_ADMIN_ADDR",
                                      help="host:port of the Admin service.")] = "127.0.0.1:50052",
    token: Annotated[str | None, typer.Option(envvar="QNEXT_ADMIN_TOKEN", show_default=False,
                                              help="Admin token (sent as a bearer token).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the response as JSON.")] = False,
    timeout: Annotated[float, typer.Option(envvar="QNEXT_ADMIN_TIMEOUT",
                                           help="Deadline of each call, in seconds.")] = 10.0,
    tls_ca: Annotated[Path | None, typer.Option("--tls-ca", show_default=False,
                                                help="Root certificate (PEM); use TLS.")] = None,
) -> None:
    """Runtime control of a qnext server (stats, memory, strategy, cache resize)."""
    if not (math.isfinite(timeout) and timeout > 0):
        fail("--timeout must be > 0")
    ctx.obj = Target(addr=addr, token=token or None, as_json=as_json, timeout=timeout,
                     tls_ca=tls_ca)


@app.command()
def version() -> None:
    """Print the qnext version (of this client; `info` shows the server's)."""
    typer.echo(qnext.__version__)


@app.command()
def stats(ctx: typer.Context) -> None:
    """Load and throughput: queues, counters, tokens/s, prefix-cache hit rate."""
    from qnext.v1 import admin_pb2

    _show(ctx, _call(ctx, "GetStats", admin_pb2.GetStatsRequest()), fmt.format_stats)


@app.command()
def memory(ctx: typer.Context) -> None:
    """The memory plan and what the KV pages and state slots hold now."""
    from qnext.v1 import admin_pb2

    _show(ctx, _call(ctx, "GetMemory", admin_pb2.GetMemoryRequest()), fmt.format_memory)


@app.command("set-strategy")
def set_strategy(ctx: typer.Context, strategy: Annotated[str, typer.Argument(
        help="off | no_buffer | extra_buffer", show_default=False)]) -> None:
    """Switch the prefix-cache strategy (applied at a step boundary)."""
    from qnext.v1 import admin_pb2

    name = strategy.lower().replace("-", "_")
    if name not in STRATEGIES:
        fail(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    value = admin_pb2.RadixStrategy.Value(f"RADIX_STRATEGY_{name.upper()}")
    request = admin_pb2.SetRadixStrategyRequest(strategy=value)
    _show(ctx, _call(ctx, "SetRadixStrategy", request), fmt.format_memory)


def _resize_request(ratio: float | None, slots: int | None, dry_run: bool) -> Any:
    """The `ResizeMambaCacheRequest`, or exit 2 on bad flags (before any RPC)."""
    from qnext.v1 import admin_pb2

    if (ratio is None) == (slots is None):
        fail("resize needs exactly one of --ratio or --slots")
    if ratio is not None:
        if not (math.isfinite(ratio) and ratio > 0):
            fail(f"--ratio must be > 0, not {ratio}")
        return admin_pb2.ResizeMambaCacheRequest(ratio=ratio, dry_run=dry_run)
    if not 1 <= slots <= MAX_UINT32:  # type: ignore[operator]
        fail(f"--slots must be >= 1, not {slots}")
    return admin_pb2.ResizeMambaCacheRequest(num_slots=slots, dry_run=dry_run)


@app.command()
def resize(
    ctx: typer.Context,
    ratio: Annotated[float | None, typer.Option(
        help="New --mamba-full-memory-ratio (> 0).", show_default=False)] = None,
    slots: Annotated[int | None, typer.Option(
        help="A fixed number of state slots (>= 1).", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the plan.")] = False,
) -> None:
    """Re-split memory between state slots and KV pages (exactly one of --ratio / --slots)."""
    request = _resize_request(ratio, slots, dry_run)
    _show(ctx, _call(ctx, "ResizeMambaCache", request), fmt.format_resize)


@app.command()
def flush(ctx: typer.Context) -> None:
    """Drop every cached prefix that no running request uses."""
    from qnext.v1 import admin_pb2

    _show(ctx, _call(ctx, "FlushCache", admin_pb2.FlushCacheRequest()), fmt.format_flush)


@app.command()
def drain(ctx: typer.Context) -> None:
    """Stop admitting new requests; running ones finish."""
    from qnext.v1 import admin_pb2

    _show(ctx, _call(ctx, "Drain", admin_pb2.DrainRequest()), lambda response: (
        f"draining: {response.num_unfinished} requests unfinished"))


@app.command()
def resume(ctx: typer.Context) -> None:
    """Admit new requests again after a drain."""
    from qnext.v1 import admin_pb2

    _show(ctx, _call(ctx, "Resume", admin_pb2.ResumeRequest()),
          lambda _: "resumed: admitting new requests")


@app.command()
def health(ctx: typer.Context) -> None:
    """grpc.health.v1 status of the whole server (service ""); exit 1 unless SERVING."""
    from grpc_health.v1 import health_pb2

    response = _call(ctx, "Check", health_pb2.HealthCheckRequest(service=""), health=True)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    _show(ctx, response, lambda _: status)
    if status != "SERVING":
        raise typer.Exit(code=1)


@app.command()
def check(ctx: typer.Context) -> None:
    """Check the integrity of the KV pages, state slots and prefix cache (at a step boundary);
    exit 1 on a violation."""
    from qnext.v1 import admin_pb2

    response = _call(ctx, "CheckIntegrity", admin_pb2.CheckIntegrityRequest())
    _show(ctx, response, fmt.format_integrity)
    if not response.ok:
        raise typer.Exit(code=1)


@app.command()
def info(ctx: typer.Context) -> None:
    """The model, the device, the software versions and the configuration."""
    from qnext.v1 import admin_pb2

    _show(ctx, _call(ctx, "GetServerInfo", admin_pb2.GetServerInfoRequest()), fmt.format_info)


@app.command("set-log-level")
def set_log_level(ctx: typer.Context, level: Annotated[str, typer.Argument(
        help="debug | info | warning | error", show_default=False)]) -> None:
    """Change the log level of the front end and the worker."""
    from qnext.v1 import admin_pb2

    name = level.lower()
    if name not in LOG_LEVELS:
        fail(f"level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    response = _call(ctx, "SetLogLevel", admin_pb2.SetLogLevelRequest(level=name))
    _show(ctx, response, lambda _: f"log level: {name}")


if __name__ == "__main__":
    app()
