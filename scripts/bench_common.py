"""What the benchmarks share: the HBM copy bandwidth measured in the same run (the floors'
denominator), the relative difference used to check outputs before timing, and for the
whole-model benchmarks the engine on CUDA and the per-decode-step median."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch
import triton.testing


def copy_gbps() -> float:
    """GB/s of a 1 GiB device-to-device copy, read + write counted (median of do_bench)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=200)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def graph_us(fn, reps: int = 40) -> float:
    """Median µs of replays of fn captured in a CUDA graph, L2 flushed before each (what a
    captured decode step pays: no Python launch, cold caches)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def config_80b(layers: int | None = None) -> dict:
    """The Qwen3-Next-80B-A3B config.json dict; with `layers`, cut to that depth (every 4th
    layer full attention, as in the full model)."""
    from qnext.worker.tiny.presets import preset_config

    hf = preset_config("80b-a3b")
    if layers is not None:
        hf["num_hidden_layers"] = layers
        hf["layer_types"] = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention"
                             for i in range(layers)]
    return hf


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float32."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def serving_engine(path, **flags):
    """qnext's engine on CUDA in bf16 with the prefix cache off: the engine flags' defaults,
    then `flags` (build_config names)."""
    from qnext.cli import options as o
    from qnext.worker.engine import Engine

    defaults = {name: default for name, _, default in o.ENGINE_FLAGS}
    cfg = o.build_config(path, **{**defaults, "device": "cuda", "dtype": o.Dtype.bfloat16,
                                  **flags})
    engine = Engine(replace(cfg, cache=replace(cfg.cache, disable_radix_cache=True)))
    graphs = engine.runner.graphs
    print("decode CUDA graphs: " + (f"captured, batch sizes {graphs.sizes}" if graphs
                                    else "NOT captured (eager decode)"), flush=True)
    return engine


def median_step(run, new_tokens: int, repeats: int) -> float:
    """Median seconds per decode step of `run(n)` (which generates n tokens): the time for
    1 + N tokens minus the time for 1, over N, so prefill and warm-up cancel out."""
    run(2)  # warm-up (compiles, captures)
    steps = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(1)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        run(1 + new_tokens)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        steps.append(((t2 - t1) - (t1 - t0)) / new_tokens)
    return statistics.median(steps)


def profile_table(run, label: str, rows: int = 25) -> None:
    """Print where `run()` spends its time on this process (rank 0 under TP): torch.profiler's
    ops sorted by device time, then by host time — the first look at a fixed cost."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(f"\n### profile: {label}, by device time\n")
    print(table.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60))
    print(f"\n### profile: {label}, by host time\n")
    print(table.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))
