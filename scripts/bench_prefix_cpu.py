"""Prefix caching on a multi-turn chat workload, CPU, tiny model (a benchmark, not a test).

`--conversations` chats run side by side for `--turns` turns; each turn's prompt is the whole
conversation so far (previous prompt + answer) plus `--user-tokens` new tokens, the first turn
a `--system-tokens` shared system prompt plus user tokens. Per strategy it reports the hit rate
(prompt tokens reused / prompt tokens), the prefill tokens actually computed, and wall time.
The anchor, in the same run, is the engine with the cache disabled; every strategy must give
its exact greedy tokens (checked here).

    python scripts/bench_prefix_cpu.py [--conversations 8] [--turns 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

RUNS = [("off", 1, False), ("no_buffer", 1, False), ("extra_buffer", 1, False),
        ("extra_buffer", 1, True), ("extra_buffer", 16, True)]


def _engine(path, strategy: str, page_size: int, overlap: bool):
    from qnext.worker.config import CacheConfig, Config, LoadConfig, ModelConfig, SchedConfig
    from qnext.worker.engine import Engine

    return Engine(Config(
        model=ModelConfig.from_dir(path), load=LoadConfig(model_path=str(path), dtype="float32"),
        cache=CacheConfig(page_size=page_size, cpu_memory_bytes=256 << 20,
                          disable_radix_cache=strategy == "off",
                          mamba_scheduler_strategy="auto" if strategy == "off" else strategy),
        sched=SchedConfig(disable_overlap_schedule=not overlap, chunked_prefill_size=256)))


def _run(engine, args, params) -> tuple[list[list[int]], float]:
    """All conversations turn by turn (each turn one batch); returns the answers and time."""
    gen = torch.Generator().manual_seed(0)
    system = torch.randint(0, 384, (args.system_tokens,), generator=gen).tolist()
    chats = [list(system) for _ in range(args.conversations)]
    answers, start = [], time.perf_counter()
    for _ in range(args.turns):
        for chat in chats:
            chat += torch.randint(0, 384, (args.user_tokens,), generator=gen).tolist()
        outs = engine.generate([list(c) for c in chats], params, progress=False)
        for chat, out in zip(chats, outs):
            chat += out.output_ids
            answers.append(out.output_ids)
    return answers, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--system-tokens", type=int, default=200)
    parser.add_argument("--user-tokens", type=int, default=60)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from qnext.worker.log import configure_logging
    from qnext.worker.sched.request import SamplingParams
    from qnext.worker.tiny import write_tiny_checkpoint

    configure_logging("warning")
    path = write_tiny_checkpoint(tempfile.mkdtemp(prefix="qnext-bench-"), "tiny")
    params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens, ignore_eos=True)
    rows, anchor = [], None
    for strategy, page, overlap in RUNS:
        engine = _engine(path, strategy, page, overlap)
        engine.generate([list(range(100))], params, progress=False)  # warm-up
        engine.flush_cache()
        before = engine.stats()["prefix_cache"]
        answers, seconds = _run(engine, args, params)
        anchor = anchor or (answers, seconds)
        stats = engine.stats()["prefix_cache"]
        prompt, cached = (stats[k] - before[k] for k in ("prompt_tokens", "cached_tokens"))
        rows.append(dict(strategy=strategy, page_size=page, overlap=overlap,
                         hit_rate=cached / prompt, prompt_tokens=prompt,
                         prefill_tokens=prompt - cached,
                         seconds=seconds, speedup=anchor[1] / seconds,
                         same_tokens=answers == anchor[0]))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads; "
          f"{args.conversations} chats x {args.turns} turns, system {args.system_tokens}, "
          f"user {args.user_tokens}, answer {args.new_tokens} tokens")
    print("| strategy | page | overlap | hit rate | prompt tokens | prefill computed | "
          "time s | speed-up vs off | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['page_size']} | {r['overlap']} | {r['hit_rate']:.1%} | "
              f"{r['prompt_tokens']} | {r['prefill_tokens']} | {r['seconds']:.2f} | "
              f"{r['speedup']:.2f} | {r['same_tokens']} |")


if __name__ == "__main__":
    main()
