"""The TP command ring (`worker/engine/command_ring.py`) between real processes: every
follower gets every command, in order, across wrap-arounds of a small ring with a slow
reader (rank 0 runs ahead only as far as the slots allow); a command larger than a slot
arrives as the "over gloo" marker (None); the file can go once the followers opened it."""

from __future__ import annotations

import multiprocessing as mp
import os

from qnext.worker.engine.command_ring import RingReader, RingWriter

CTX = mp.get_context("spawn")


def _follow(spec, index: int, out) -> None:
    reader = RingReader(spec, index)
    out.put(("opened", index))
    got = []
    while True:
        command = reader.get()
        got.append(command)
        if command == ("stop",):
            break
    out.put((index, got))


def test_followers_get_every_command_in_order_and_big_ones_as_markers():
    writer = RingWriter.create(CTX, followers=2, slots=2, capacity=256)
    out = CTX.Queue()
    procs = [CTX.Process(target=_follow, args=(writer.spec, i, out)) for i in range(2)]
    for proc in procs:
        proc.start()
    try:
        assert sorted(out.get(timeout=60) for _ in procs) == [("opened", 0), ("opened", 1)]
        writer.unlink()
        assert not os.path.exists(writer.spec.path)  # the mappings live on
        commands = [("launch", i, tuple(range(i % 7))) for i in range(40)]
        commands[17] = ("install", "x" * 1000)  # larger than a 256-byte slot
        sent = [writer.put(c) for c in commands] + [writer.put(("stop",))]
        assert sent.count(False) == 1 and not sent[17]
        want = commands[:17] + [None] + commands[18:] + [("stop",)]
        results = dict(out.get(timeout=60) for _ in procs)
        assert results == {0: want, 1: want}
    finally:
        for proc in procs:
            proc.join(timeout=60)
        writer.close()
    assert all(proc.exitcode == 0 for proc in procs)
