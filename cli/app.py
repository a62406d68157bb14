"""The `qnext` typer app and what its commands share: the one-line failure exit and the
default (embedded tiny) checkpoint. Commands live in `main` and `serve`."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="qnext: serve Qwen3-Next hybrid models over gRPC.", no_args_is_help=True,
                  add_completion=False)

DEFAULT_TINY_DIR = Path.home() / ".cache" / "qnext" / "tiny"


def fail(message: str) -> None:
    """One-line reason on stderr, exit code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def resolve_model_path(model_path: Path | None) -> Path:
    """The given checkpoint, or the embedded tiny model (written on first use)."""
    if model_path is not None:
        if not (model_path / "config.json").is_file():
            fail(f"--model-path {model_path}: no config.json there")
        return model_path
    if not (DEFAULT_TINY_DIR / "config.json").is_file():
        from qnext.worker.tiny import write_tiny_checkpoint

        write_tiny_checkpoint(DEFAULT_TINY_DIR, "tiny")
    return DEFAULT_TINY_DIR


