"""Benchmark (not a test): NCCL vs the symmetric-memory one-shot all-reduce
(worker/layers/symm_allreduce.py) on every visible GPU, one process each (mp.spawn, no
torchrun), set up by `init_distributed` as the engine does. bf16 messages of 4 KB .. 512 KB,
in place; eager (one Python call per op) and inside a CUDA graph (100 ops captured in one
graph, replayed; time per op). Times are the slowest rank's. Prints a markdown table.

    PYTHONPATH=$PWD python3 scripts/bench_allreduce.py [--world N] [--iters 200]
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qnext.worker.layers.parallel import init_distributed

SIZES_KB = (4, 16, 64, 256, 512)
GRAPH_OPS = 100  # all-reduces captured in one graph
GRAPH_REPLAYS = 20


def _time_us(run, ops_per_run: int, runs: int) -> float:
    """Per-op µs of `runs` calls of `run` after a barrier, the slowest rank's."""
    torch.cuda.synchronize()
    dist.barrier()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(runs):
        run()
    end.record()
    end.synchronize()
    us = torch.tensor([start.elapsed_time(end) * 1e3 / (runs * ops_per_run)], device="cuda")
    dist.all_reduce(us, op=dist.ReduceOp.MAX)
    return us.item()


def _eager_us(op, x: torch.Tensor, iters: int) -> float:
    for _ in range(10):
        op(x)
    return _time_us(lambda: op(x), 1, iters)


def _graph_us(op, x: torch.Tensor) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture (NCCL's communicator)
        for _ in range(3):
            op(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_OPS):
            op(x)
    graph.replay()
    return _time_us(graph.replay, GRAPH_OPS, GRAPH_REPLAYS)


def _check(fast, world: int) -> None:
    """Sanity before timing: ones sum to world on every element."""
    x = torch.ones(4096, dtype=torch.bfloat16, device="cuda")
    fast.all_reduce(x)
    assert bool((x == world).all()), "symmetric-memory all-reduce gave a wrong sum"


def _nccl(x: torch.Tensor) -> None:
    dist.all_reduce(x)


def _rank_main(rank: int, world: int, port: int, iters: int) -> None:
    tp = init_distributed(rank, world, f"tcp://127.0.0.1:{port}", f"cuda:{rank}")
    fast = tp.comm.fast
    if fast is not None:
        _check(fast, world)
    rows = []
    for kb in SIZES_KB:
        x = torch.zeros(kb * 1024 // 2, dtype=torch.bfloat16, device="cuda")  # sums stay 0
        ops = [_nccl] + ([fast.all_reduce] if fast is not None and fast.fits(x) else [])
        eager = [_eager_us(op, x, iters) for op in ops]
        graph = [_graph_us(op, x) for op in ops]
        rows.append((kb, eager, graph))
    if rank == 0:
        _print(world, fast, rows)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # NOTE: skip interpreter teardown (NCCL threads), as the TP tests do


def _print(world: int, fast, rows) -> None:
    kind = "n/a (see the custom_all_reduce line)" if fast is None else "copy-in + one-shot"
    print(f"{torch.cuda.get_device_name()} x {world}, torch {torch.__version__}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"symmetric memory: {kind}; NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE')}, "
          f"TORCH_SYMM_MEM_DISABLE_MULTICAST={os.environ.get('TORCH_SYMM_MEM_DISABLE_MULTICAST')}")
    print("\n| bf16 message | NCCL eager µs | symm eager µs | NCCL graph µs | symm graph µs "
          "| graph NCCL / symm |")
    print("|---|---|---|---|---|---|")
    for kb, eager, graph in rows:
        symm = len(eager) > 1
        cells = [f"{eager[0]:.1f}", f"{eager[1]:.1f}" if symm else "—", f"{graph[0]:.1f}",
                 f"{graph[1]:.1f}" if symm else "—", f"{graph[0] / graph[1]:.2f}" if symm else "—"]
        print(f"| {kb} KB | " + " | ".join(cells) + " |")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=torch.cuda.device_count(),
                        help="GPUs (default: all visible)")
    parser.add_argument("--iters", type=int, default=200, help="eager calls timed per size")
    args = parser.parse_args()
    if args.world < 2 or args.world > torch.cuda.device_count():
        raise SystemExit(f"needs 2 .. {torch.cuda.device_count()} GPUs, got --world {args.world}")
    mp.spawn(_rank_main, args=(args.world, _free_port(), args.iters), nprocs=args.world)


if __name__ == "__main__":
    main()
