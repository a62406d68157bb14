"""Benchmark (not a test): qnext's engine vs transformers' `generate` per decode step, on the
same random weights of a reduced-depth, full-width Qwen3-Next-80B-A3B (default 4 layers: three
Gated DeltaNet + one gated attention, 512 experts top-10), batch 1, bf16, one GPU.

Per-step time = (time for 1 + N new tokens - time for 1 new token) / N, the median of
`--repeats` runs, so prefill and warm-up cancel out. qnext runs its serving engine (scheduler,
CUDA graphs unless --disable-cuda-graph); transformers runs `generate(do_sample=False)` with
its own Qwen3-Next (torch fallbacks unless a kernel package is importable — keep FLA off the
path for this comparison, say which in the report).

    python scripts/bench_vs_hf.py [--layers 4] [--new-tokens 32] [--prompt-len 128]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from bench_common import config_80b, median_step, profile_table, serving_engine


def write_checkpoint(layers: int, out: Path) -> Path:
    from qnext.worker.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(out, config_80b(layers), dtype="bfloat16", num_shards=4,
                                 with_mtp=False)


def time_hf(path: Path, prompt: list[int], new_tokens: int, repeats: int) -> float:
    from transformers import Qwen3NextForCausalLM

    model = Qwen3NextForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).cuda().eval()
    ids = torch.tensor([prompt], device="cuda")

    def run(n: int) -> None:
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False)

    return median_step(run, new_tokens, repeats)


def time_qnext(path: Path, prompt: list[int], new_tokens: int, repeats: int,
               graphs: bool, profile: bool = False) -> float:
    from qnext.worker.sched.request import SamplingParams

    engine = serving_engine(path, max_running_requests=8, max_total_tokens=8192,
                            disable_cuda_graph=not graphs)

    def run(n: int) -> None:
        engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=n,
                                                 ignore_eos=True))

    step = median_step(run, new_tokens, repeats)
    if profile:
        profile_table(lambda: run(1 + new_tokens), f"qnext, graphs {'on' if graphs else 'off'}, "
                      f"prompt + {new_tokens} decode steps")
    engine.close()
    engine = run = None  # noqa: F841 - drop the last references to the engine's pools
    gc.collect()  # the engine's pools go before the next engine plans its memory
    torch.cuda.empty_cache()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="profiler tables of qnext's run")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 150000, (args.prompt_len,), generator=gen).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = write_checkpoint(args.layers, Path(tmp))
        print(f"checkpoint written in {time.perf_counter() - t0:.0f} s")
        results = {"qnext (CUDA graphs)": time_qnext(path, prompt, args.new_tokens,
                                                     args.repeats, graphs=True,
                                                     profile=args.profile),
                   "qnext (eager)": time_qnext(path, prompt, args.new_tokens, args.repeats,
                                               graphs=False),
                   "transformers generate": time_hf(path, prompt, args.new_tokens,
                                                    args.repeats)}
    base = results["transformers generate"]
    print(f"\n{args.layers} layers, batch 1, prompt {args.prompt_len}, {args.new_tokens} steps")
    print("| engine | ms per decode step | speed-up vs transformers |")
    print("|---|---|---|")
    for name, step in results.items():
        print(f"| {name} | {step * 1e3:.2f} | {base / step:.1f}× |")


if __name__ == "__main__":
    main()
