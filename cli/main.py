"""`qnext`: the user-facing CLI (typer). Commands parse options into a frozen Config and call
into the worker; heavy imports happen inside the commands so `--help` stays instant."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(help="qnext: serve Qwen3-Next hybrid models over gRPC.", no_args_is_help=True,
                  add_completion=False)

DEFAULT_TINY_DIR = Path.home() / ".cache" / "qnext" / "tiny"


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class LoadFormat(str, Enum):
    auto = "auto"
    safetensors = "safetensors"
    dummy = "dummy"


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


@app.command("make-tiny")
def make_tiny(out: Path = typer.Argument(..., help="Directory to write the checkpoint to."),
              preset: str = typer.Option("tiny", help="tiny | tiny-b | tiny-tp"),
              seed: int = typer.Option(0, help="Seed of the random weights."),
              shards: int = typer.Option(1, help="Number of safetensors shards.")) -> None:
    """Write a tiny random-weight Qwen3-Next checkpoint (a real HF directory)."""
    from qnext.worker.tiny import TINY_PRESETS, write_tiny_checkpoint

    if preset not in TINY_PRESETS:
        fail(f"--preset must be one of {', '.join(TINY_PRESETS)}")
    if shards < 1:
        fail("--shards must be >= 1")
    typer.echo(str(write_tiny_checkpoint(out, preset, seed=seed, num_shards=shards)))


@app.command()
def generate(prompt: str = typer.Option("Hello from qnext", help="Prompt text."),
             model_path: Path = typer.Option(None, help="HF checkpoint dir (default: tiny)."),
             max_new_tokens: int = typer.Option(32, help="Tokens to generate (greedy)."),
             dtype: Dtype = typer.Option(Dtype.float32, help="Weight / activation dtype."),
             device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
             load_format: LoadFormat = typer.Option(LoadFormat.auto)) -> None:
    """Offline greedy generation on one process (the gRPC server is `qnext serve`)."""
    if max_new_tokens < 1:
        fail("--max-new-tokens must be >= 1")
    path = resolve_model_path(model_path)
    from qnext.cli.offline import run_generate

    try:
        text = run_generate(path, prompt, max_new_tokens, dtype.value, device, load_format.value)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(text)


if __name__ == "__main__":
    app()
