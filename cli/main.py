"""`qnext`: the user-facing CLI (typer). Commands parse options into a frozen Config and call
into the worker; heavy imports happen inside the commands so `--help` stays instant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from qnext.cli import options as o

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
def generate(
    prompt: Annotated[list[str], typer.Option(help="Prompt text (repeat for a batch).")] = [
        "Hello from qnext"],
    chat: Annotated[bool, typer.Option(help="Wrap each prompt in the chat template.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 32,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Top-k cut; 0 disables.")] = 0,
    seed: Annotated[int, typer.Option(help="Sampling seed; -1: derived per request.")] = -1,
    model_path: o.ModelPath = None, dtype: o.DtypeOpt = o.Dtype.float32, device: o.Device = "cpu",
    load_format: o.LoadFormatOpt = o.LoadFormat.auto, tp: o.Tp = 1, page_size: o.PageSize = 1,
    mem_fraction_static: o.MemFraction = 0.88, max_running_requests: o.MaxRunning = None,
    max_total_tokens: o.MaxTotalTokens = None, chunked_prefill_size: o.ChunkedPrefill = 8192,
    max_prefill_tokens: o.MaxPrefill = 16384, mamba_ssm_dtype: o.SsmDtypeOpt = o.SsmDtype.float32,
    mamba_full_memory_ratio: o.MambaRatio = 0.9, max_mamba_cache_size: o.MaxMamba = None,
    disable_overlap_schedule: o.NoOverlap = False, random_seed: o.RandomSeed = 0,
    context_length: o.ContextLength = None, cpu_memory_mb: o.CpuMemory = 256,
    mamba_scheduler_strategy: o.RadixStrategyOpt = o.RadixStrategy.auto,
    disable_radix_cache: o.DisableRadix = False, mamba_track_interval: o.TrackInterval = 256,
) -> None:
    """Offline generation through the engine; prints one JSON line per prompt."""
    flags = {k: v for k, v in locals().items() if k not in _GENERATE_ONLY}
    if not all(prompt):
        fail("prompt is empty")
    from qnext.worker.log import configure_logging

    configure_logging("warning")
    path = resolve_model_path(model_path)
    from qnext.cli.offline import SamplingFlags, run_generate

    sampling = SamplingFlags(max_new_tokens, temperature, top_p, top_k or None,
                             None if seed == -1 else seed)
    try:
        cfg = o.build_config(path, **flags)
        results = run_generate(cfg, prompt, chat, sampling)
    except ValueError as exc:  # ConfigError, MemoryPlanError, RequestRejected, CheckpointError
        fail(str(exc))
    for result in results:  # one JSON object per prompt, in order
        typer.echo(json.dumps(result, ensure_ascii=False))


_GENERATE_ONLY = {"prompt", "chat", "max_new_tokens", "temperature", "top_p", "top_k", "seed",
                  "model_path"}


if __name__ == "__main__":
    app()
