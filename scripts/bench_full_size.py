"""Benchmark (not a test): the full-size Qwen3-Next-80B-A3B config with dummy (random) weights
made on the GPUs, through qnext's engine in-process (no gRPC: the engine-level numbers that
bound what `qnext serve` can reach), tensor parallel over `--tp` GPUs, bf16, CUDA graphs.

Reports: batch-1 TPOT (median per-step time from 1 + N minus 1 new tokens, so prefill cancels),
TTFT of a 1K and an 8K prompt (time to the first token of a fresh prompt, radix cache off),
output throughput at concurrency C with 1K in / --out-len out (C prompts submitted at once),
and the batch-1 bandwidth ceiling: bytes of the weights one decode step reads (attention, GDN,
shared expert, 10 routed experts per layer, embedding row, lm_head) / the measured device copy
bandwidth, per rank.

    python scripts/bench_full_size.py --tp 4 [--concurrency 8,64,256] [--out-len 1024] [--profile]

(the defaults are issue 7's: concurrency 8 / 64 / 256, 1K in / 1K out)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench_common import config_80b, copy_gbps, median_step, profile_table, serving_engine


def write_config_dir(out: Path, layers: int | None = None) -> Path:
    """config.json (80B-A3B, cut to `layers` if given) + the tiny tokenizer: all the engine
    reads with dummy weights."""
    import json

    from qnext.worker.tiny.tokenizer import build_tokenizer

    (out / "config.json").write_text(json.dumps(config_80b(layers), indent=1))
    build_tokenizer(out)
    return out


def step_bytes(hf: dict, tp: int) -> float:
    """Bytes of weights one batch-1 decode step reads per rank (bf16)."""
    h, layers = hf["hidden_size"], hf["num_hidden_layers"]
    n_full = layers // hf["full_attention_interval"]
    hd, nq, nkv = hf["head_dim"], hf["num_attention_heads"], hf["num_key_value_heads"]
    attn = h * (2 * nq * hd + 2 * nkv * hd) + nq * hd * h
    kd, vd = hf["linear_key_head_dim"], hf["linear_value_head_dim"]
    nk, nv = hf["linear_num_key_heads"], hf["linear_num_value_heads"]
    gdn = h * (2 * nk * kd + 2 * nv * vd + 2 * nv) + nv * vd * h
    expert = 3 * h * hf["moe_intermediate_size"]
    shared = 3 * h * hf["shared_expert_intermediate_size"]
    moe = (hf["num_experts_per_tok"] * expert + shared + h * hf["num_experts"])
    total = n_full * attn + (layers - n_full) * gdn + layers * moe
    return 2 * (total / tp + hf["vocab_size"] * h / tp + h)


def main() -> None:
    from qnext.cli.options import LoadFormat
    from qnext.worker.sched.request import SamplingParams

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=4)
    ap.add_argument("--concurrency", default="8,64,256", help="issue 7's levels")
    ap.add_argument("--out-len", type=int, default=1024, help="issue 7: 1K in / 1K out")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true",
                    help="also print profiler tables of a 1K TTFT and of 16 decode steps")
    args = ap.parse_args()
    conc = [int(c) for c in args.concurrency.split(",") if c]
    gbps = copy_gbps()
    print(f"{torch.cuda.get_device_name()} x{args.tp}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, copy {gbps:.0f} GB/s")
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(0, 150000, (n,), generator=gen).tolist()  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        engine = serving_engine(write_config_dir(Path(tmp)), tp=args.tp,
                                load_format=LoadFormat.dummy,
                                max_running_requests=max(conc + [8]))
        print(f"engine ready in {time.perf_counter() - t0:.0f} s", flush=True)
        prompt = ids(128)
        step = median_step(lambda n: engine.generate([prompt], SamplingParams(
            temperature=0, max_new_tokens=n, ignore_eos=True)), 32, args.repeats)
        floor = step_bytes(config_80b(), args.tp) / (gbps * 1e9)
        print(f"batch-1 TPOT: {step * 1e3:.2f} ms (weights floor {floor * 1e3:.2f} ms at the "
              f"copy bandwidth: {floor / step:.0%} of the ceiling)", flush=True)
        for n in (1024, 8192):
            engine.generate([ids(n)], SamplingParams(temperature=0, max_new_tokens=1))  # warm
            t0 = time.perf_counter()
            engine.generate([ids(n)], SamplingParams(temperature=0, max_new_tokens=1))
            print(f"TTFT {n} tokens: {(time.perf_counter() - t0) * 1e3:.1f} ms", flush=True)
        if args.profile:
            one = SamplingParams(temperature=0, max_new_tokens=1)
            profile_table(lambda: engine.generate([ids(1024)], one), "TTFT, 1K prompt")
            more = SamplingParams(temperature=0, max_new_tokens=17, ignore_eos=True)
            profile_table(lambda: engine.generate([prompt], more),
                          "128-token prompt + 16 decode steps, batch 1")
        for c in conc:
            # warm-up at this concurrency: Triton compiles a kernel per shape class (batch of
            # one or more sequences, sizes by 16) the first time it meets one
            engine.generate([ids(1024) for _ in range(c)],
                            SamplingParams(temperature=0, max_new_tokens=2, ignore_eos=True))
            sp = SamplingParams(temperature=0, max_new_tokens=args.out_len, ignore_eos=True)
            t0 = time.perf_counter()
            outs = engine.generate([ids(1024) for _ in range(c)], sp)
            dt = time.perf_counter() - t0
            tokens = sum(len(o.output_ids) for o in outs)
            print(f"concurrency {c}, 1024 in / {args.out_len} out: {tokens / dt:.0f} output "
                  f"tok/s ({dt:.1f} s)", flush=True)
        engine.close()


if __name__ == "__main__":
    main()
