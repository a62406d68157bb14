"""`qnext`: the user-facing CLI (typer). Commands parse options into a frozen Config and call
into the worker; heavy imports happen inside the commands so `--help` stays instant. The
serving commands (`serve`, `worker`) live in `qnext.cli.serve`, `chat` in `qnext.cli.chat`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from qnext.cli import bench as _bench  # noqa: F401  (registers bench)
from qnext.cli import chat as _chat  # noqa: F401  (registers chat)
from qnext.cli import options as o
from qnext.cli import serve as _serve  # noqa: F401  (registers serve / worker)
from qnext.cli.app import app, fail, resolve_model_path


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
@o.with_engine_flags
def generate(
    prompt: Annotated[list[str], typer.Option(help="Prompt text (repeat for a batch).")] = [
        "Hello from qnext"],
    chat: Annotated[bool, typer.Option(help="Wrap each prompt in the chat template.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 32,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Top-k cut; 0 disables.")] = 0,
    seed: Annotated[int, typer.Option(help="Sampling seed; -1: derived per request.")] = -1,
    model_path: o.ModelPath = None, *, engine_flags: dict,
) -> None:
    """Offline generation through the engine; prints one JSON line per prompt."""
    if not all(prompt):
        fail("prompt is empty")
    from qnext.worker.log import configure_logging

    configure_logging("warning")
    path = resolve_model_path(model_path)
    from qnext.cli.offline import SamplingFlags, run_generate

    sampling = SamplingFlags(max_new_tokens, temperature, top_p, top_k or None,
                             None if seed == -1 else seed)
    try:
        cfg = o.build_config(path, **engine_flags)
        if cfg.parallel.node_rank > 0:
            fail("generate runs on node 0; start the other nodes with `qnext worker "
                 "--node-rank N`")
        results = run_generate(cfg, prompt, chat, sampling)
    except ValueError as exc:  # ConfigError, MemoryPlanError, RequestRejected, CheckpointError
        fail(str(exc))
    for result in results:  # one JSON object per prompt, in order
        typer.echo(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    app()
