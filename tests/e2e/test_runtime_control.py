"""Runtime control against a live server: `qnext-admin resize --ratio 0.5` and
`qnext-admin set-strategy extra_buffer` while 8 streams run; every stream finishes with the
same greedy text as before the change, and `memory` shows the new split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from qnext.v1 import generation_pb2 as g, generation_pb2_grpc
from tests.e2e.servers import Server

NEW = 300
PARAMS = g.SamplingParams(temperature=0, max_new_tokens=NEW, ignore_eos=True)


def admin_cli(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "QNEXT_ADMIN_TOKEN": server.token}
    return subprocess.run([sys.executable, "-m", "qnext.cli.admin", "--addr",
                           f"127.0.0.1:{server.admin_port}", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def stream_all(server, prompts, started: threading.Barrier | None = None):
    """One thread per prompt streaming it; returns (threads, texts filled in as they run).
    With `started`, returns once every stream has its first chunk."""
    gen = generation_pb2_grpc.GenerationStub(server.data)
    texts = [""] * len(prompts)

    def one(i: int) -> None:
        first = True
        for msg in gen.Stream(g.GenerateRequest(token_ids=g.TokenIds(ids=prompts[i]),
                                                sampling=PARAMS), timeout=300):
            texts[i] += msg.chunk.text
            if first and started is not None:
                first = False
                started.wait(timeout=60)
            if msg.WhichOneof("kind") == "complete":
                assert msg.complete.usage.completion_tokens == NEW
                texts[i] += "<done>"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    if started is not None:
        started.wait(timeout=60)  # every stream has its first chunk: all 8 are running
        assert all(t.is_alive() for t in threads)
    return threads, texts


def test_resize_and_strategy_switch_while_8_streams_run(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    server = Server(path)  # no_buffer, overlap loop
    try:
        prompts = [[(7 * i + j) % 380 + 1 for j in range(10 + 5 * i)] for i in range(8)]
        threads, want = stream_all(server, prompts)
        for t in threads:
            t.join()
        before = json.loads(admin_cli(server, "--json", "memory").stdout)
        threads, got = stream_all(server, prompts, threading.Barrier(9))
        resize = admin_cli(server, "resize", "--ratio", "0.5")
        switch = admin_cli(server, "set-strategy", "extra_buffer")
        still_running = sum(t.is_alive() for t in threads)
        for t in threads:
            t.join()
        assert resize.returncode == 0, resize.stderr
        assert switch.returncode == 0, switch.stderr
        assert still_running > 0, "the changes should land while streams run"
        assert got == want and all(text.endswith("<done>") for text in got)
        after = json.loads(admin_cli(server, "--json", "memory").stdout)
        assert before["strategy"] == "no_buffer" and after["strategy"] == "extra_buffer"
        assert after["mamba_full_memory_ratio"] == 0.5
        assert after["state_pool_bytes"] != before["state_pool_bytes"]
        assert int(after["pages"]["used"]) == int(after["state_slots"]["used"]) == 0
    finally:
        assert server.stop() == 0
