"""Worker faults and shutdown against real processes on 127.0.0.1: `qnext serve` restarts a
spawned worker killed mid-stream, one whose TP follower rank was killed or stopped, and one
hung (SIGSTOP) past --watchdog-timeout (the stream ends UNAVAILABLE within seconds, health goes
NOT_SERVING then SERVING, new requests work), or gives up with --worker-max-restarts 0;
SIGTERM drains (running streams finish, new calls are refused, exit 0) and cancels what
outlives the grace period."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qnext.v1 import generation_pb2 as g, generation_pb2_grpc
from tests.e2e.servers import Server, until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LONG = g.SamplingParams(temperature=0, max_new_tokens=10**4, ignore_eos=True)


def children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def worker_pid(serve_pid: int) -> int:
    """The one child process of `qnext serve`: its worker."""
    kids = children(serve_pid)
    assert len(kids) == 1, kids
    return kids[0]


def follower_pid(worker: int) -> int:
    """The one TP follower rank of a `--tp 2` worker (multiprocessing's spawned child; the
    other child is its resource tracker)."""
    ranks = [pid for pid in children(worker)
             if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(ranks) == 1, ranks
    return ranks[0]


def health_watch(server: Server):
    """An open health Watch stream of the data port, past its first (SERVING) reply."""
    watch = health_pb2_grpc.HealthStub(server.data).Watch(health_pb2.HealthCheckRequest(),
                                                          timeout=120)
    assert next(watch).status == SERVING
    return watch


def next_status(watch, status: int) -> None:
    """Follow `watch` until it reports `status`."""
    assert any(reply.status == status for reply in watch)


def refused(gen) -> bool:
    """Whether a new one-token Generate gets UNAVAILABLE (one admitted just finishes)."""
    try:
        gen.Generate(g.GenerateRequest(text="late", sampling=g.SamplingParams(
            max_new_tokens=1)), timeout=30)
        return False
    except grpc.RpcError as err:
        assert err.code() is grpc.StatusCode.UNAVAILABLE, err
        return True


def ended_with(stream) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    return err.value.code()


@pytest.fixture(scope="module")
def path(tiny_checkpoint):
    return tiny_checkpoint("tiny")


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def restarted_after(server: Server, fault, within: float) -> None:
    """Run `fault(worker pid)` (it breaks the worker) while a stream runs: it ends UNAVAILABLE
    within `within` seconds, health goes NOT_SERVING then SERVING, a new worker serves."""
    gen = generation_pb2_grpc.GenerationStub(server.data)
    stream = gen.Stream(g.GenerateRequest(text="x", sampling=LONG), timeout=120)
    assert next(stream).chunk.token_ids
    watch, old = health_watch(server), worker_pid(server.proc.pid)
    fault(old)
    broken = time.monotonic()
    assert ended_with(stream) is grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - broken < within
    next_status(watch, NOT_SERVING)
    next_status(watch, SERVING)
    reply = gen.Generate(g.GenerateRequest(text="y", sampling=g.SamplingParams(
        max_new_tokens=4)), timeout=60)
    assert reply.complete.usage.completion_tokens == 4
    assert server.proc.poll() is None and worker_pid(server.proc.pid) != old


def test_a_killed_worker_is_restarted(path):
    server = Server(path)
    try:
        restarted_after(server, lambda worker: os.kill(worker, signal.SIGKILL), 5)
        log = server.log.read_text()
        assert '"worker_exited"' in log and '"exit_code": -9' in log
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_dead_or_hung_tp_rank_and_the_worker_restarts(tiny_checkpoint, fault):
    """A follower rank SIGKILLed: rank 0 exits at once (code 1). SIGSTOPped: rank 0 waits in
    a collective until the watchdog kills the worker and the stopped rank with it."""
    server = Server(tiny_checkpoint("tiny-tp"), "--tp", "2", "--watchdog-timeout", "3")
    ranks = []

    def fault_(worker: int) -> None:
        ranks.append(follower_pid(worker))
        os.kill(ranks[0], signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    try:
        restarted_after(server, fault_, 5 if fault == "kill" else 15)
        log = server.log.read_text()
        if fault == "kill":
            assert '"tp_rank_exited"' in log and '"exit_code": 1' in log
        else:
            assert '"worker_hung"' in log and '"exit_code": -9' in log
        until(lambda: gone(ranks[0]))
    finally:
        assert server.stop() == 0


def test_a_hung_worker_is_killed_by_the_watchdog(path):
    server = Server(path, "--watchdog-timeout", "3")
    try:
        restarted_after(server, lambda worker: os.kill(worker, signal.SIGSTOP), 15)
        log = server.log.read_text()
        assert '"worker_hung"' in log and '"exit_code": -9' in log
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_bad_watchdog_timeout_exits_2(value):
    done = subprocess.run([sys.executable, "-m", "qnext.cli.main", "serve", "--watchdog-timeout",
                           value], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--watchdog-timeout must be a positive number of seconds" in done.stderr


def test_no_restart_left_exits_nonzero(path):
    server = Server(path, "--worker-max-restarts", "0")
    os.kill(worker_pid(server.proc.pid), signal.SIGKILL)
    assert server.proc.wait(timeout=60) != 0
    assert "gave up after 0 restarts" in server.log.read_text()
    server.stop()
    server.log.unlink()


def test_sigterm_lets_a_running_stream_finish(path):
    server = Server(path, "--graceful-shutdown-timeout", "60")
    gen = generation_pb2_grpc.GenerationStub(server.data)
    stream = gen.Stream(g.GenerateRequest(text="x", sampling=g.SamplingParams(
        temperature=0, max_new_tokens=100, ignore_eos=True)), timeout=120)
    first = next(stream)
    server.proc.send_signal(signal.SIGTERM)
    until(lambda: refused(gen))  # refused, or the server is gone already
    rest = list(stream)
    assert rest[-1].complete.usage.completion_tokens == 100
    assert len(first.chunk.token_ids) + sum(len(m.chunk.token_ids) for m in rest) == 100
    assert server.proc.wait(timeout=60) == 0
    server.stop()


def test_sigterm_cancels_what_outlives_the_grace_period(path):
    server = Server(path, "--graceful-shutdown-timeout", "4")
    gen = generation_pb2_grpc.GenerationStub(server.data)
    stream = gen.Stream(g.GenerateRequest(text="x", sampling=LONG), timeout=120)
    assert next(stream).chunk.token_ids
    watch = health_watch(server)
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    next_status(watch, NOT_SERVING)
    with pytest.raises(grpc.RpcError) as err:  # the long stream keeps the server up
        gen.Generate(g.GenerateRequest(text="late"), timeout=30)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in err.value.details()
    assert ended_with(stream) in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.ABORTED)
    assert server.proc.wait(timeout=30) == 0
    assert time.monotonic() - signalled < 20  # the grace period, then a prompt exit
    server.stop()
