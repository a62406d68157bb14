"""Profiling aid (not a test, not a benchmark table): where the host time of a decode step goes
on the GPU, for the Qwen3-Next-80B-A3B config cut to `--layers` layers, dummy weights, bf16,
CUDA graphs, batch `--batch`.

Prints, for `--steps` decode steps of a batch already running (rank 0 under TP):
- the wall time per step, and from a torch.profiler trace of the same steps the device's busy
  time (union of kernel intervals) and idle time per step: idle is what the host costs;
- the host API calls of those steps by total time (graph launches, copies, broadcasts);
- every host-device synchronisation the steps make (`torch.cuda.set_sync_debug_mode`), each
  with the qnext frame that caused it;
- cProfile's functions by own time and by cumulative time.
With `--trace DIR` the profiler trace is also written there (chrome JSON, gzipped).

    python scripts/profile_decode_host.py [--layers 4] [--batch 1] [--steps 64] [--tp 1]
"""

from __future__ import annotations

import argparse
import cProfile
import collections
import io
import json
import pstats
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

from bench_common import median_step, serving_engine
from bench_full_size import write_config_dir


def trace_summary(run, steps: int, trace_dir: str | None) -> None:
    """Profile `run()`; print device busy / idle ms per step over the span of its kernels and
    the host's CUDA runtime calls by total time."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    path = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(path))
    events = [e for e in json.loads(path.read_text())["traceEvents"] if "dur" in e]
    kernels = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    if not kernels:
        print("no device activity in the trace")
        return
    busy, end = 0.0, kernels[0][0]
    for t0, t1 in kernels:
        busy += max(0.0, t1 - max(t0, end))
        end = max(end, t1)
    span = kernels[-1][1] - kernels[0][0]
    print(f"device span {span / 1e3:.1f} ms: busy {busy / 1e3 / steps:.3f} ms a step, idle "
          f"{(span - busy) / 1e3 / steps:.3f} ms a step ({steps} steps + the prefill)")
    kernel_table(events, steps)
    calls: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "cuda_runtime" or e.get("name", "").startswith("c10d::"):
            calls[e["name"]] += e["dur"]
            counts[e["name"]] += 1
    print("\n### host runtime calls, total ms (calls)\n")
    for name, us in calls.most_common(12):
        print(f"{us / 1e3:9.2f}  ({counts[name]:5d})  {name}")
    if trace_dir:
        import gzip
        import shutil

        Path(trace_dir).mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src, gzip.open(Path(trace_dir) / "trace.json.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)


def kernel_table(events: list, steps: int, top: int = 30) -> None:
    """Device time and launches a step by kernel name (the prefill included, spread over the
    steps): where the step's time goes, and how many launches it makes."""
    time: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "kernel":
            name = e["name"][:90]
            time[name] += e["dur"]
            count[name] += 1
    print(f"\n### kernels: {sum(count.values()) / steps:.0f} launches, "
          f"{sum(time.values()) / 1e3 / steps:.3f} ms a step\n")
    print("| µs a step | launches a step | kernel |\n|---|---|---|")
    for name, us in time.most_common(top):
        print(f"| {us / steps:.1f} | {count[name] / steps:.1f} | `{name}` |")


def sync_sites(run) -> collections.Counter:
    """The qnext frames of every host-device synchronisation `run()` makes."""
    sites: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack() if "qnext" in f.filename
                  or "/worker/" in f.filename or "/kernels/" in f.filename]
        where = frames[-1] if frames else None
        sites[f"{where.filename.split('/')[-1]}:{where.lineno} {where.line}" if where
              else str(message)[:80]] += 1

    old = warnings.showwarning
    warnings.showwarning = record
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = old
    return sites


def main() -> None:
    from qnext.cli.options import LoadFormat
    from qnext.worker.sched.request import SamplingParams

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--trace", help="also write the profiler trace (gzipped) here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = serving_engine(write_config_dir(Path(tmp), args.layers), tp=args.tp,
                                load_format=LoadFormat.dummy,
                                max_running_requests=max(8, args.batch), max_total_tokens=65536)
        prompts = [[(7 * i + j) % 1000 + 10 for j in range(128)] for i in range(args.batch)]

        def run(n: int) -> None:
            engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=n,
                                                    ignore_eos=True))

        wall = median_step(run, args.steps, repeats=1) * 1e3
        print(f"{torch.cuda.get_device_name()} x{args.tp}, {args.layers} layers, batch "
              f"{args.batch}: {wall:.3f} ms a step (wall)", flush=True)
        trace_summary(lambda: run(1 + args.steps), args.steps, args.trace)
        print("\n### host-device synchronisations, by site\n")
        for site, count in sync_sites(lambda: run(1 + args.steps)).most_common(20):
            print(f"{count:6d}  {site}")
        prof = cProfile.Profile()
        prof.runcall(run, 1 + args.steps)
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(35)
            print(f"\n### cProfile by {key}, {1 + args.steps} steps\n")
            print(buf.getvalue()[-9000:])
        engine.close()


if __name__ == "__main__":
    main()
