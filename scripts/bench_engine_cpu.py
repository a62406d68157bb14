"""CPU throughput of the engine on the tiny model at batch 1 and 32 (a benchmark, not a test).

Anchor measured in the same run: transformers' `generate` on the same checkpoint, same prompts
(equal lengths, so no padding), greedy. Prints a markdown table; absolute CPU numbers only
compare within one run — quote the ratios.

    python scripts/bench_engine_cpu.py [--prompt-len 32] [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch


def _engine(path, overlap: bool):
    from qnext.worker.config import CacheConfig, Config, LoadConfig, ModelConfig, SchedConfig
    from qnext.worker.engine import Engine

    return Engine(Config(model=ModelConfig.from_dir(path),
                         load=LoadConfig(model_path=str(path), dtype="float32"),
                         cache=CacheConfig(cpu_memory_bytes=128 << 20),
                         sched=SchedConfig(disable_overlap_schedule=not overlap)))


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import Qwen3NextForCausalLM

    from qnext.worker.log import configure_logging
    from qnext.worker.sched.request import SamplingParams
    from qnext.worker.tiny import write_tiny_checkpoint

    configure_logging("warning")
    path = write_tiny_checkpoint(tempfile.mkdtemp(prefix="qnext-bench-"), "tiny")
    hf = Qwen3NextForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens, ignore_eos=True)
    engines = {"normal": _engine(path, False), "overlap": _engine(path, True)}
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, best of {args.repeats}")
    print("| batch | qnext normal tok/s | qnext overlap tok/s | transformers tok/s | "
          "overlap / transformers |")
    print("|---|---|---|---|---|")
    for batch in (1, 32):
        ids = torch.randint(0, 384, (batch, args.prompt_len), generator=gen)
        prompts = ids.tolist()
        tokens = batch * args.new_tokens
        rates = {name: tokens / _time(lambda e=e: e.generate(prompts, params, progress=False),
                                               args.repeats)
                 for name, e in engines.items()}

        def run_hf():
            with torch.inference_mode():
                hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                            max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)

        hf_rate = tokens / _time(run_hf, args.repeats)
        print(f"| {batch} | {rates['normal']:.0f} | {rates['overlap']:.0f} | {hf_rate:.0f} | "
              f"{rates['overlap'] / hf_rate:.2f} |")


if __name__ == "__main__":
    main()
