"""`qnext bench`: a gRPC load generator against a running qnext server, reporting what
`vllm bench serve` reports (request / token throughput; TTFT, TPOT, ITL, E2E latency with
mean, median, std and percentiles) as a table, or JSON with vLLM's field names (`--json`,
`--save-result`). Prompts are random token ids, so the vocabulary size comes from the model's
config.json (`--model-path`, default: the embedded tiny model) or `--vocab-size`.
Exit code 1 when any request failed, 2 on bad options. Never imports torch.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from qnext.cli.app import DEFAULT_TINY_DIR, app, fail


class Dataset(str, Enum):
    random_ids = "random-ids"
    shared_prefix = "shared-prefix"


def _vocab_size(model_path: Path | None, vocab_size: int | None) -> int:
    if vocab_size is not None:
        if vocab_size < 1:
            fail("--vocab-size must be >= 1")
        return vocab_size
    config = (model_path or DEFAULT_TINY_DIR) / "config.json"
    try:
        return int(json.loads(config.read_text())["vocab_size"])
    except (OSError, KeyError, ValueError):
        fail(f"cannot read vocab_size from {config}: pass --model-path or --vocab-size")


def _percentiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        values = ()
    if not values or not all(0 <= p <= 100 for p in values):
        fail(f"--metric-percentiles {text!r}: comma-separated numbers in [0, 100]")
    return values


def _check(num_prompts: int, input_len: int, output_len: int, range_ratio: float,
           request_rate: float, burstiness: float, max_concurrency: int | None) -> None:
    if num_prompts < 1 or input_len < 1 or output_len < 1:
        fail("--num-prompts, --input-len and --output-len must be >= 1")
    if not 0.0 <= range_ratio <= 1.0:
        fail("--range-ratio must be in [0, 1]")
    if not request_rate > 0 or not burstiness > 0:
        fail("--request-rate and --burstiness must be > 0")
    if max_concurrency is not None and max_concurrency < 1:
        fail("--max-concurrency must be >= 1")


@app.command()
def bench(
    addr: Annotated[str, typer.Option(envvar="QNEXT_ADDR", help="The server's data port.")] =
    "127.0.0.1:50051",
    dataset: Annotated[Dataset, typer.Option(help="random-ids or shared-prefix.")] =
    Dataset.random_ids,
    num_prompts: Annotated[int, typer.Option(help="Requests to send.")] = 100,
    input_len: Annotated[int, typer.Option(help="Prompt tokens (suffix for shared-prefix).")]
    = 1024,
    output_len: Annotated[int, typer.Option(help="Tokens to generate per request.")] = 128,
    range_ratio: Annotated[float, typer.Option(
        help="Lengths drawn uniformly from len*ratio..len; 1 = fixed.")] = 1.0,
    prefix_len: Annotated[int, typer.Option(help="shared-prefix: tokens of a group's prefix.")]
    = 512,
    num_groups: Annotated[int, typer.Option(help="shared-prefix: number of prefixes.")] = 8,
    request_rate: Annotated[float, typer.Option(help="Requests per second; inf = all at once.")]
    = math.inf,
    burstiness: Annotated[float, typer.Option(help="Gamma shape of arrivals; 1 = Poisson.")]
    = 1.0,
    max_concurrency: Annotated[Optional[int], typer.Option(help="Requests in flight at most.")]
    = None,
    warmup_requests: Annotated[int, typer.Option(help="Unrecorded requests sent first.")] = 0,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of prompts and arrivals.")] = 0,
    model_path: Annotated[Optional[Path], typer.Option(
        help="Checkpoint whose config.json gives the vocabulary size.")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="Instead of --model-path.")] = None,
    metric_percentiles: Annotated[str, typer.Option(help="e.g. 50,90,99.")] = "50,90,99",
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] =
    False,
    save_result: Annotated[Optional[Path], typer.Option(help="Also write the JSON here.")] =
    None,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 600.0,
    tls_ca: Annotated[Optional[Path], typer.Option(
        help="PEM root certificate: connect with TLS.")] = None,
) -> None:
    """Benchmark a running qnext server (like `vllm bench serve`)."""
    from qnext.cli import bench_load as load
    from qnext.cli.bench_metrics import format_table, summarize

    _check(num_prompts, input_len, output_len, range_ratio, request_rate, burstiness,
           max_concurrency)
    percentiles = _percentiles(metric_percentiles)
    vocab = _vocab_size(model_path, vocab_size)
    if dataset is Dataset.shared_prefix:
        if prefix_len < 1 or num_groups < 1:
            fail("--prefix-len and --num-groups must be >= 1")
        work = load.shared_prefix(num_prompts, num_groups, prefix_len, input_len, output_len,
                                  range_ratio, vocab, seed)
    else:
        work = load.random_ids(num_prompts, input_len, output_len, range_ratio, vocab, seed)
    if tls_ca is not None and not tls_ca.is_file():
        fail(f"--tls-ca {tls_ca}: no such file")
    target = load.Target(addr, tls_ca, timeout, temperature)
    if warmup_requests > 0:
        warm = load.random_ids(warmup_requests, input_len, output_len, 1.0, vocab, seed + 7)
        asyncio.run(load.drive(target, warm, max_concurrency=max_concurrency))
    records, duration = asyncio.run(load.drive(
        target, work, request_rate=request_rate, burstiness=burstiness,
        max_concurrency=max_concurrency, seed=seed))
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "backend": "qnext-grpc", "addr": addr, "dataset": dataset.value,
              "num_prompts": num_prompts, "input_len": input_len, "output_len": output_len,
              "range_ratio": range_ratio,
              "request_rate": request_rate if math.isfinite(request_rate) else "inf",
              "burstiness": burstiness, "max_concurrency": max_concurrency,
              **summarize(records, duration, percentiles)}
    text = json.dumps(result, indent=2)
    if save_result is not None:
        save_result.write_text(text + "\n")
    typer.echo(text if json_output else format_table(result, percentiles))
    if result["failed"]:
        raise typer.Exit(code=1)
