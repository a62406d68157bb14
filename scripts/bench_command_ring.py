"""Benchmark (not a test): rank 0's cost of handing a command to its TP followers — gloo's
`broadcast_object_list` (the old path) against the shared-memory command ring
(`worker/engine/command_ring.py`) — with real follower processes on this machine.

A command is a decode plan's worth of plain ints (`--seqs` sequences of a few ints each).
Reports, per command: rank 0's time in `send` (what its loop pays) and the time until every
follower has unpickled all commands, over `--commands` commands. CPU only (no GPU involved).

    python scripts/bench_command_ring.py [--followers 3] [--commands 2000] [--seqs 64]
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import time

import torch.distributed as dist

from qnext.worker.engine.command_ring import RingReader, RingWriter

CTX = mp.get_context("spawn")


def _command(i: int, seqs: int) -> tuple:
    return ("launch", tuple((s, i, s + i, (i * 7 + s) % 1000, 1) for s in range(seqs)), i)


def _follower(rank: int, size: int, port: int, spec, commands: int, done) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=size, timeout=datetime.timedelta(seconds=120))
    reader = RingReader(spec, rank - 1) if spec is not None else None
    dist.barrier()  # rank 0 starts its clock after this
    for _ in range(commands):
        if reader is not None:
            reader.get()
        else:
            box = [None]
            dist.broadcast_object_list(box, src=0)
    done.put(time.perf_counter())
    dist.destroy_process_group()


def run(mode: str, followers: int, commands: int, seqs: int, port: int) -> tuple[float, float]:
    ring = RingWriter.create(CTX, followers) if mode == "ring" else None
    done = CTX.Queue()
    procs = [CTX.Process(target=_follower, args=(r, followers + 1, port, ring and ring.spec,
                                                 commands, done))
             for r in range(1, followers + 1)]
    for proc in procs:
        proc.start()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=followers + 1, timeout=datetime.timedelta(seconds=120))
    payload = [_command(i, seqs) for i in range(commands)]
    dist.barrier()
    start, spent = time.perf_counter(), 0.0
    for command in payload:
        t0 = time.perf_counter()
        if ring is None or not ring.put(command):
            dist.broadcast_object_list([command], src=0)
        spent += time.perf_counter() - t0
    last = max(done.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join()
    dist.destroy_process_group()
    if ring is not None:
        ring.close()
    return spent / commands * 1e6, (last - start) / commands * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--followers", type=int, default=3)
    ap.add_argument("--commands", type=int, default=2000)
    ap.add_argument("--seqs", type=int, default=64)
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.followers} followers, {args.commands} commands of "
          f"{args.seqs} sequences")
    print("| path | rank 0 µs a command (send) | µs a command until every follower has it |")
    print("|---|---|---|")
    for i, mode in enumerate(("gloo", "ring")):
        send, total = run(mode, args.followers, args.commands, args.seqs, 29500 + 7 * i)
        print(f"| {mode} | {send:.1f} | {total:.1f} |", flush=True)


if __name__ == "__main__":
    main()
