"""Tensor parallelism over two "nodes" on 127.0.0.1 (gloo on CPU): node 1 started with
`qnext serve --node-rank 1` runs only its TP rank (no front end), node 0's `qnext generate`
drives both and produces the single-node TP2 tokens; node 1 exits 0 when node 0 is done.
Bad multi-node flags exit 2 with the flag named."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.net import free_port

QNEXT = [sys.executable, "-m", "qnext.cli.main"]


def _generate(path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([*QNEXT, "generate", "--model-path", str(path), "--prompt",
                           "two nodes", "--max-new-tokens", "10", *flags],
                          capture_output=True, text=True, timeout=300)


def test_two_nodes_give_the_single_node_tokens(tiny_checkpoint):
    path = tiny_checkpoint("tiny-tp")
    single = _generate(path, "--tp", "2")
    assert single.returncode == 0, single.stderr
    multi = ["--tp", "2", "--nnodes", "2", "--dist-init-addr", f"127.0.0.1:{free_port()}"]
    node1 = subprocess.Popen([*QNEXT, "serve", "--model-path", str(path), *multi,
                              "--node-rank", "1"], stderr=subprocess.PIPE, text=True)
    try:
        node0 = _generate(path, *multi, "--node-rank", "0")
        assert node0.returncode == 0, node0.stderr
        assert json.loads(node0.stdout)["token_ids"] == json.loads(single.stdout)["token_ids"]
        assert node1.wait(timeout=120) == 0, node1.stderr.read()[-3000:]
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait()


@pytest.mark.parametrize("flags,named", [
    (["--tp", "2", "--nnodes", "2"], "--dist-init-addr"),
    (["--tp", "3", "--nnodes", "2", "--dist-init-addr", "127.0.0.1:1"], "--nnodes"),
    (["--tp", "2", "--nnodes", "2", "--node-rank", "2", "--dist-init-addr", "h:1"],
     "--node-rank"),
    (["--tp", "2", "--nnodes", "2", "--node-rank", "1", "--dist-init-addr", "h:1"],
     "node 0"),
])
def test_bad_multinode_flags_exit_2(tiny_checkpoint, flags, named):
    run = _generate(tiny_checkpoint("tiny-tp"), *flags)
    assert run.returncode == 2 and named in run.stderr and run.stderr.startswith("error:")
