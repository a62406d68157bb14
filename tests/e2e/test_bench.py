"""`qnext bench` as a real process against a real `qnext serve` on 127.0.0.1: exact token
counts (ignore_eos), sane latency orderings, the shared-prefix workload hits the prefix cache,
failures are counted and exit 1, bad options exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qnext.v1 import admin_pb2, admin_pb2_grpc
from tests.e2e.servers import Server
from tests.net import free_port


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    server = Server(path, "--chunked-prefill-size", "32")  # no_buffer keeps chunk-end states
    yield path, server
    assert server.stop() == 0, server.log.read_text()[-2000:]


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qnext.cli.main", "bench", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_random_ids_counts_every_token(setup, tmp_path):
    path, server = setup
    saved = tmp_path / "result.json"
    run = bench("--addr", server.address, "--model-path", str(path), "--num-prompts", "12",
                "--input-len", "20", "--output-len", "8", "--max-concurrency", "4",
                "--warmup-requests", "2", "--json", "--save-result", str(saved))
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert json.loads(saved.read_text()) == result
    assert (result["completed"], result["failed"]) == (12, 0)
    assert result["total_input_tokens"] == 12 * 20
    assert result["total_output_tokens"] == 12 * 8
    assert 0 < result["median_ttft_ms"] <= result["median_e2el_ms"]
    assert result["p99_itl_ms"] >= result["median_itl_ms"] > 0
    assert result["mean_tpot_ms"] > 0 and result["output_throughput"] > 0
    assert result["request_rate"] == "inf" and result["max_concurrency"] == 4


def test_shared_prefix_hits_the_prefix_cache(setup):
    path, server = setup
    admin = admin_pb2_grpc.AdminStub(server.control)

    def cached() -> int:
        stats = admin.GetStats(admin_pb2.GetStatsRequest(), metadata=server.auth, timeout=30)
        return stats.prefix_cache.cached_tokens

    before = cached()
    run = bench("--addr", server.address, "--model-path", str(path), "--dataset",
                "shared-prefix", "--num-prompts", "8", "--num-groups", "2", "--prefix-len",
                "48", "--input-len", "6", "--output-len", "4", "--max-concurrency", "2",
                "--request-rate", "200", "--range-ratio", "0.5")
    assert run.returncode == 0, run.stderr
    assert "Successful requests:" in run.stdout and "Mean TTFT (ms):" in run.stdout
    assert cached() - before >= 6 * 32  # 6 of 8 prompts reuse the state after the first chunk


def test_unreachable_server_counts_failures_and_exits_1(setup):
    path, _ = setup
    run = bench("--addr", f"127.0.0.1:{free_port()}", "--model-path", str(path),
                "--num-prompts", "3", "--input-len", "4", "--output-len", "2", "--timeout", "2",
                "--json")
    assert run.returncode == 1
    result = json.loads(run.stdout)
    assert result["failed"] == 3 and result["completed"] == 0
    assert set(result["errors"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


@pytest.mark.parametrize("flag,value", [("--num-prompts", "0"), ("--range-ratio", "2"),
                                        ("--request-rate", "0"), ("--vocab-size", "0"),
                                        ("--metric-percentiles", "50,x")])
def test_bad_options_exit_2_with_a_reason(flag, value):
    run = bench(flag, value, "--vocab-size" if flag != "--vocab-size" else "--num-prompts",
                "10" if flag != "--vocab-size" else "1")
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and flag in run.stderr
