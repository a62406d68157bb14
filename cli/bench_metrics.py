"""`qnext bench` arithmetic: per-request timing records -> the fields of `vllm bench serve`
(`BenchmarkMetrics`), computed the way vLLM and SGLang compute them so numbers compare:

- TTFT: send -> first chunk carrying tokens; E2EL: send -> the stream's end;
- ITL: every gap between consecutive token-carrying chunks, pooled over requests;
- TPOT: per request (e2e - ttft) / (output_tokens - 1), over requests with > 1 output token;
- throughputs: completed requests, output tokens, input + output tokens per second of the run.
Pure Python (no grpc, no torch).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RequestRecord:
    """One request as the client saw it; times in seconds from the request's send."""

    prompt_len: int
    output_len: int = 0  # tokens generated (the server's completion_tokens)
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)  # gaps between token-carrying chunks
    error: str = ""  # gRPC status name when the request failed

    @property
    def ok(self) -> bool:
        return not self.error and self.e2e is not None

    @property
    def tpot(self) -> float | None:
        if not self.ok or self.output_len < 2 or self.ttft is None:
            return None
        return (self.e2e - self.ttft) / (self.output_len - 1)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile with linear interpolation (numpy's default); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _stats(name: str, seconds: list[float], percentiles: tuple[float, ...]) -> dict:
    """mean / median / std / percentiles of one metric, in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    out = {f"mean_{name}_ms": statistics.fmean(ms) if ms else 0.0,
           f"median_{name}_ms": statistics.median(ms) if ms else 0.0,
           f"std_{name}_ms": statistics.pstdev(ms) if ms else 0.0}
    for p in percentiles:
        out[f"p{p:g}_{name}_ms"] = percentile(ms, p)
    return out


def summarize(records: list[RequestRecord], duration: float,
              percentiles: tuple[float, ...] = (50, 90, 99)) -> dict:
    """The result dict: counts, throughputs and the four latency metrics (vLLM's names)."""
    done = [r for r in records if r.ok]
    samples = {"ttft": [r.ttft for r in done if r.ttft is not None],
               "tpot": [t for r in done if (t := r.tpot) is not None],
               "itl": [gap for r in done for gap in r.itl],
               "e2el": [r.e2e for r in done]}
    total_input = sum(r.prompt_len for r in done)
    total_output = sum(r.output_len for r in done)
    errors: dict[str, int] = {}
    for r in records:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    result = {"duration": duration, "completed": len(done), "failed": len(records) - len(done),
              "errors": errors, "total_input_tokens": total_input,
              "total_output_tokens": total_output,
              "request_throughput": len(done) / duration if duration > 0 else 0.0,
              "output_throughput": total_output / duration if duration > 0 else 0.0,
              "total_token_throughput": (total_input + total_output) / duration
              if duration > 0 else 0.0}
    for name in METRICS:
        result.update(_stats(name, samples[name], percentiles))
    return result


def format_table(result: dict, percentiles: tuple[float, ...] = (50, 90, 99)) -> str:
    """A human-readable summary in the layout of `vllm bench serve`."""
    lines = [f"{' Serving Benchmark Result ':=^56}"]

    def row(label: str, value) -> None:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{label:<42}{text:>14}")

    row("Successful requests:", result["completed"])
    row("Failed requests:", result["failed"])
    row("Benchmark duration (s):", result["duration"])
    row("Total input tokens:", result["total_input_tokens"])
    row("Total generated tokens:", result["total_output_tokens"])
    row("Request throughput (req/s):", result["request_throughput"])
    row("Output token throughput (tok/s):", result["output_throughput"])
    row("Total token throughput (tok/s):", result["total_token_throughput"])
    titles = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
              "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}
    for name in METRICS:
        lines.append(f"{' ' + titles[name] + ' ':-^56}")
        row(f"Mean {name.upper()} (ms):", result[f"mean_{name}_ms"])
        row(f"Median {name.upper()} (ms):", result[f"median_{name}_ms"])
        for p in percentiles:
            row(f"P{p:g} {name.upper()} (ms):", result[f"p{p:g}_{name}_ms"])
    lines.append("=" * 56)
    return "\n".join(lines)
