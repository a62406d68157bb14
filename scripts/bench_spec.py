"""Speculative decoding (NEXTN, the checkpoint's MTP head) against plain decoding on the
trained tiny checkpoint (issue 8): accept length and rate, output tokens/s and speed-up at
batch 1 and 16, greedy outputs checked identical. A benchmark, not a test; prints markdown.

    python scripts/bench_spec.py [--model-path tests/data/tiny-mtp] [--device cpu|cuda]
        [--new-tokens 128] [--steps 1 3] [--batches 1 16] [--repeats 5]

Prompts: `--prompt-len`-token windows of the held-out standard-library files (the last files
of `train_tiny_mtp.py`'s sorted list), encoded with the checkpoint's tokenizer. Tokens/s =
batch x new tokens / wall time of `Engine.generate` (prompt prefill included), best of
`--repeats` after one warm-up, engines taking turns; the prefix cache is off so repeats
recompute everything.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny_mtp import encode_files, split_files  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "tests" / "data" / "tiny-mtp"


def heldout_prompts(model_path: Path, num: int, length: int, heldout: int) -> list[list[int]]:
    """`num` windows of `length` tokens: every held-out file's first window, then its next
    windows 1024 tokens further on, round-robin over the files, until there are enough."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    docs = encode_files(tokenizer, split_files(heldout)[1])
    prompts: list[list[int]] = []
    for start in range(0, max(map(len, docs)), 1024):
        for ids in docs:
            if len(ids) >= start + length and len(prompts) < num:
                prompts.append(ids[start:start + length])
    if len(prompts) < num:
        raise SystemExit(f"only {len(prompts)} prompts of {length} tokens in the held-out files")
    return prompts


def make_engine(args: argparse.Namespace, steps: int | None):
    """An engine on the checkpoint; `steps` None: no speculation."""
    from qnext.worker.config import CacheConfig, Config, LoadConfig, ModelConfig, SchedConfig
    from qnext.worker.engine import Engine
    from qnext.worker.spec_config import SpecConfig

    cfg = Config(model=ModelConfig.from_dir(args.model_path),
                 load=LoadConfig(model_path=str(args.model_path), dtype=args.dtype,
                                 device=args.device),
                 cache=CacheConfig(cpu_memory_bytes=256 << 20, disable_radix_cache=True,
                                   max_total_tokens=1 << 16, max_mamba_cache_size=64),
                 sched=SchedConfig(disable_cuda_graph=args.disable_cuda_graph,
                                   disable_overlap_schedule=args.disable_overlap_schedule))
    spec = SpecConfig("NEXTN", num_steps=steps) if steps else SpecConfig()
    return Engine(replace(cfg, spec=spec))


def measure(engines: dict, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    """engine key -> (best wall seconds, output ids, counter deltas over the timed runs).
    One warm-up each (graphs, JIT), then the engines take turns, so load that comes and goes
    on a shared machine hits them alike."""
    from qnext.worker.sched.request import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens, ignore_eos=True)
    counters = {key: getattr(e.executor, "counters", {}) for key, e in engines.items()}
    for engine in engines.values():
        engine.generate(prompts, params, progress=False)
    before = {key: dict(c) for key, c in counters.items()}
    best, outputs = dict.fromkeys(engines, float("inf")), {}
    for _ in range(args.repeats):
        for key, engine in engines.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs[key] = [o.output_ids for o in engine.generate(prompts, params,
                                                                  progress=False)]
            best[key] = min(best[key], time.perf_counter() - start)
    return {key: (best[key], outputs[key],
                  {k: counters[key][k] - before[key][k] for k in counters[key]})
            for key in engines}


def row(batch: int, steps: int, plain_s: float, spec_s: float, delta: dict, same: bool,
        tokens: int) -> str:
    """One table row: accept length (incl. the bonus token) and rate from counter deltas."""
    length = delta["accepted"] / delta["verify_seqs"] + 1 if delta["verify_seqs"] else 0.0
    rate = delta["accepted"] / delta["proposed"] if delta["proposed"] else 0.0
    return (f"| {batch} | {steps} | {length:.2f} | {rate:.2f} | {tokens / plain_s:.0f} | "
            f"{tokens / spec_s:.0f} | {plain_s / spec_s:.2f} | {'yes' if same else 'NO'} |")


def describe(args: argparse.Namespace, engines: dict) -> str:
    device = (torch.cuda.get_device_name() if args.device.startswith("cuda")
              else f"{platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} threads")
    graphs = ", ".join(f"{'plain' if steps is None else f'{steps} steps'}: "
                       f"{_graphs(engine)} ({type(engine.loop).__name__})"
                       for steps, engine in engines.items())
    return (f"{datetime.date.today()}, torch {torch.__version__}, {device}, {args.dtype}; "
            f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy, best of "
            f"{args.repeats}; CUDA graphs captured (and loop) — {graphs}")


def _graphs(engine) -> str:
    """Which of an engine's steps replay CUDA graphs."""
    ex = engine.executor
    kinds = [name for name, g in (("decode", engine.runner.graphs),
                                  ("verify", getattr(ex, "verify_graphs", None)),
                                  ("draft", getattr(ex, "draft_graphs", None))) if g is not None]
    return "+".join(kinds) or "none"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-path", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="float32 keeps greedy ties exact")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--heldout", type=int, default=32, help="as in train_tiny_mtp.py")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    ap.add_argument("--disable-cuda-graph", action="store_true")
    ap.add_argument("--disable-overlap-schedule", action="store_true",
                    help="the normal loop for every engine (else plain and chains overlap)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from qnext.worker.log import configure_logging

    configure_logging("warning")
    prompts = heldout_prompts(args.model_path, max(args.batches), args.prompt_len, args.heldout)
    engines = {steps: make_engine(args, steps) for steps in [None, *args.steps]}
    print(describe(args, engines) + "\n")
    print("| batch | steps | accept length | accept rate | plain tok/s | spec tok/s | speed-up "
          "| identical |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        runs = measure(engines, prompts[:batch], args)
        plain_s, want, _ = runs[None]
        for steps in args.steps:
            spec_s, got, delta = runs[steps]
            print(row(batch, steps, plain_s, spec_s, delta, got == want,
                      batch * args.new_tokens), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
