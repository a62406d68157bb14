"""`qnext-admin`: the control-plane CLI. It is a client of the Admin gRPC service only (never
imports torch or the worker); the Admin RPCs arrive with the gRPC issue."""

from __future__ import annotations

import typer

import qnext

app = typer.Typer(help="qnext-admin: inspect and control a running qnext server.",
                  no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print the qnext version."""
    typer.echo(qnext.__version__)


@app.callback()
def main() -> None:
    """Runtime control of a qnext server (stats, memory, strategy, cache resize)."""


if __name__ == "__main__":
    app()
