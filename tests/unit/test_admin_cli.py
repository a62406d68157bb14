"""`qnext-admin` as a real process against a real gRPC server started here: an in-test Admin
servicer with fixed, distinctive answers (a stand-in for the engine until the real server lands)
and grpc_health's HealthServicer. Tables show the numbers, `--json` round-trips, gRPC errors and
bad flags exit 2 with one line, health NOT_SERVING and an integrity violation exit 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from qnext.v1 import admin_pb2, admin_pb2_grpc

TOKEN = "s3cret-admin-token"

STATS = admin_pb2.Stats(
    num_running=3, num_waiting=7, num_requests=1234, num_finished=1220,
    num_generated_tokens=98765, num_steps=4321, num_preemptions=2, generation_throughput=456.5,
    prefix_cache=admin_pb2.PrefixCacheStats(
        strategy="no_buffer", hit_rate=0.625, prompt_tokens=8000, cached_tokens=5000,
        inserted_tokens=7000, evicted_pages=44, evicted_slots=6),
    spec_accept_length=2.75, spec_accept_rate=0.5833)

MEMORY = admin_pb2.MemoryInfo(
    strategy="no_buffer", page_size=1, mamba_full_memory_ratio=0.9, kv_pool_bytes=3 * 2**30,
    state_pool_bytes=72 * 2**20, state_bytes_per_slot=1536 * 1024, kv_bytes_per_token=6144,
    max_total_tokens=524288, max_running_requests=24,
    pages=admin_pb2.PoolUsage(total=4096, used=1000, cached=2000, evictable=1500, free=1096),
    state_slots=admin_pb2.PoolUsage(total=48, used=11, cached=20, evictable=17, free=17))

INFO = admin_pb2.ServerInfo(
    model_path="/models/Qwen3-Next-80B-A3B", architecture="Qwen3NextForCausalLM",
    version="9.8.7", versions={"torch": "2.11.0", "grpcio": "1.85.1"},
    config_json='{"cache": {"page_size": 1}}', device="cuda:0")

INTEGRITY_OK = admin_pb2.CheckIntegrityResponse(
    ok=True, idle=True,
    pages=admin_pb2.PoolUsage(total=4096, cached=96, evictable=96, free=4000),
    state_slots=admin_pb2.PoolUsage(total=48, cached=3, evictable=3, free=45))

BROKEN = admin_pb2.CheckIntegrityResponse(
    ok=False, message="pages lost or foreign: [17]", idle=False,
    pages=admin_pb2.PoolUsage(total=4096, used=5, free=4090),
    state_slots=admin_pb2.PoolUsage(total=48, used=1, free=47))


class FakeAdmin(admin_pb2_grpc.AdminServicer):
    """Fixed answers; checks the bearer token and records every authorized request."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.integrity = INTEGRITY_OK  # what CheckIntegrity answers

    def _accept(self, name: str, request: object, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing admin token")
        self.calls.append((name, request))

    def GetStats(self, request, context):
        self._accept("GetStats", request, context)
        return STATS

    def GetMemory(self, request, context):
        self._accept("GetMemory", request, context)
        return MEMORY

    def SetRadixStrategy(self, request, context):
        self._accept("SetRadixStrategy", request, context)
        name = admin_pb2.RadixStrategy.Name(request.strategy).removeprefix("RADIX_STRATEGY_")
        memory = admin_pb2.MemoryInfo()
        memory.CopyFrom(MEMORY)
        memory.strategy = name.lower()
        return memory

    def ResizeMambaCache(self, request, context):
        self._accept("ResizeMambaCache", request, context)
        memory = admin_pb2.MemoryInfo()
        memory.CopyFrom(MEMORY)
        if request.WhichOneof("target") == "ratio":
            memory.mamba_full_memory_ratio = request.ratio
        return admin_pb2.ResizeMambaCacheResponse(memory=memory, applied=not request.dry_run)

    def FlushCache(self, request, context):
        self._accept("FlushCache", request, context)
        return admin_pb2.FlushCacheResponse(freed_pages=321, freed_slots=9)

    def Drain(self, request, context):
        self._accept("Drain", request, context)
        return admin_pb2.DrainResponse(num_unfinished=5)

    def Resume(self, request, context):
        self._accept("Resume", request, context)
        return admin_pb2.ResumeResponse()

    def GetServerInfo(self, request, context):
        self._accept("GetServerInfo", request, context)
        return INFO

    def SetLogLevel(self, request, context):
        self._accept("SetLogLevel", request, context)
        return admin_pb2.SetLogLevelResponse()

    def CheckIntegrity(self, request, context):
        self._accept("CheckIntegrity", request, context)
        return self.integrity


@pytest.fixture(scope="module")
def server():
    """(address, FakeAdmin, HealthServicer) of a server on a free loopback port."""
    admin, health_servicer = FakeAdmin(), health.HealthServicer()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    admin_pb2_grpc.add_AdminServicer_to_server(admin, grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    yield f"127.0.0.1:{port}", admin, health_servicer
    grpc_server.stop(None)


def _admin(addr: str, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QNEXT_ADMIN_")}
    env["QNEXT_ADMIN_ADDR"] = addr
    if token is not None:
        env["QNEXT_ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "qnext.cli.admin", "--timeout", "5", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_stats_table_shows_the_numbers(server):
    result = _admin(server[0], "stats")
    assert result.returncode == 0, result.stderr
    for text in ("1234", "1220", "98765", "4321", "456.5 tok/s", "62.5%", "5000 of 8000",
                 "no_buffer", "2.75 tokens/verify, 58.3% of drafts"):
        assert text in result.stdout, (text, result.stdout)
    assert result.stdout.split("running")[1].split()[0] == "3"


def test_memory_table_shows_the_plan_and_the_pools(server):
    result = _admin(server[0], "memory")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("no_buffer", "1 tokens", "0.9", "3.00 GiB", "72.00 MiB", "1.50 MiB",
                 "524288 tokens", "6.00 KiB/token", "24 requests"):
        assert text in out, (text, out)
    rows = {line.split()[0]: line.split()[-5:] for line in out.splitlines()
            if line.startswith(("pool", "pages", "state slots"))}
    assert rows["pool"] == ["total", "used", "cached", "evictable", "free"]
    assert rows["pages"] == ["4096", "1000", "2000", "1500", "1096"]
    assert rows["state"] == ["48", "11", "20", "17", "17"]


@pytest.mark.parametrize("command,expected", [
    ("stats", STATS), ("memory", MEMORY), ("info", INFO)])
def test_json_round_trips(server, command, expected):
    result = _admin(server[0], "--json", command)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert json_format.ParseDict(data, type(expected)()) == expected
    if command == "stats":
        assert data["draining"] is False  # fields at their zero value are printed too


def test_json_uses_proto_field_names(server):
    data = json.loads(_admin(server[0], "--json", "memory").stdout)
    assert data["state_slots"]["evictable"] == "17" and data["page_size"] == 1
    assert data["mamba_full_memory_ratio"] == 0.9


def test_info_lines(server):
    result = _admin(server[0], "info")
    assert result.returncode == 0, result.stderr
    for text in ("/models/Qwen3-Next-80B-A3B", "Qwen3NextForCausalLM", "9.8.7", "cuda:0",
                 "2.11.0", '"page_size": 1'):
        assert text in result.stdout, (text, result.stdout)


def test_set_strategy_sends_the_enum(server):
    addr, admin, _ = server
    result = _admin(addr, "set-strategy", "extra_buffer")
    assert result.returncode == 0, result.stderr
    name, request = admin.calls[-1]
    assert name == "SetRadixStrategy"
    assert request.strategy == admin_pb2.RADIX_STRATEGY_EXTRA_BUFFER
    assert "extra_buffer" in result.stdout


@pytest.mark.parametrize("args,target,dry_run,head", [
    (["--ratio", "0.5", "--dry-run"], ("ratio", 0.5), True, "dry run: not applied"),
    (["--slots", "64"], ("num_slots", 64), False, "applied"),
])
def test_resize_sends_one_target(server, args, target, dry_run, head):
    addr, admin, _ = server
    result = _admin(addr, "resize", *args)
    assert result.returncode == 0, result.stderr
    name, request = admin.calls[-1]
    assert name == "ResizeMambaCache" and request.dry_run is dry_run
    assert (request.WhichOneof("target"), getattr(request, target[0])) == target
    assert result.stdout.splitlines()[0] == head


@pytest.mark.parametrize("args,reason", [
    (["resize"], "exactly one of --ratio or --slots"),
    (["resize", "--ratio", "0.5", "--slots", "4"], "exactly one of --ratio or --slots"),
    (["resize", "--ratio", "0"], "--ratio must be > 0"),
    (["resize", "--ratio", "-1.5"], "--ratio must be > 0"),
    (["resize", "--slots", "0"], "--slots must be >= 1"),
    (["set-strategy", "lpm"], "strategy must be one of"),
    (["set-log-level", "loud"], "level must be one of"),
    (["--timeout", "0", "stats"], "--timeout must be > 0"),
    (["--tls-ca", "/nonexistent/ca.pem", "stats"], "--tls-ca"),
])
def test_bad_input_exits_2_before_any_rpc(server, args, reason):
    addr, admin, _ = server
    before = len(admin.calls)
    result = _admin(addr, *args)
    assert result.returncode == 2
    assert reason in _one_error_line(result)
    assert len(admin.calls) == before


@pytest.mark.parametrize("args,line,call", [
    (["flush"], "freed 321 pages, 9 state slots", "FlushCache"),
    (["drain"], "draining: 5 requests unfinished", "Drain"),
    (["resume"], "resumed: admitting new requests", "Resume"),
    (["set-log-level", "WARNING"], "log level: warning", "SetLogLevel"),
])
def test_control_commands(server, args, line, call):
    addr, admin, _ = server
    result = _admin(addr, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == line and admin.calls[-1][0] == call
    if call == "SetLogLevel":
        assert admin.calls[-1][1].level == "warning"


def test_check_ok_exits_0_with_the_pools(server):
    addr, admin, _ = server
    result = _admin(addr, "check")
    assert result.returncode == 0, result.stderr
    assert admin.calls[-1][0] == "CheckIntegrity"
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["integrity", "ok"] and "idle" in lines[1]
    rows = {line.split()[0]: line.split()[-5:] for line in lines if line.startswith("pages")}
    assert rows["pages"] == ["4096", "0", "96", "96", "4000"]


def test_check_violation_exits_1_with_the_message(server):
    addr, admin, _ = server
    admin.integrity = BROKEN
    try:
        text = _admin(addr, "check")
        as_json = _admin(addr, "--json", "check")
    finally:
        admin.integrity = INTEGRITY_OK
    assert text.returncode == 1 and text.stderr == ""
    assert text.stdout.splitlines()[0].split(None, 1) == [
        "integrity", "VIOLATION: pages lost or foreign: [17]"]
    assert "requests were running" in text.stdout
    assert as_json.returncode == 1
    assert json_format.ParseDict(json.loads(as_json.stdout),
                                 admin_pb2.CheckIntegrityResponse()) == BROKEN


def test_check_grpc_error_exits_2(server):
    result = _admin(server[0], "check", token="wrong-token")
    assert result.returncode == 2
    assert _one_error_line(result) == "error: UNAUTHENTICATED: bad or missing admin token"


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_bad_token_is_unauthenticated(server, token):
    result = _admin(server[0], "stats", token=token)
    assert result.returncode == 2 and result.stdout == ""
    assert _one_error_line(result) == "error: UNAUTHENTICATED: bad or missing admin token"


def test_token_flag_overrides_the_env_var(server):
    result = _admin(server[0], "--token", TOKEN, "drain", token="wrong-token")
    assert result.returncode == 0, result.stderr


def test_nothing_listening_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _admin(f"127.0.0.1:{port}", "stats")
    assert result.returncode == 2
    assert _one_error_line(result).startswith("error: UNAVAILABLE: ")


def test_health_serving_then_not_serving(server):
    addr, _, health_servicer = server
    serving = _admin(addr, "health")
    assert serving.returncode == 0 and serving.stdout.strip() == "SERVING", serving.stderr
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        down = _admin(addr, "health")
        down_json = _admin(addr, "--json", "health")
    finally:
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert down.returncode == 1 and down.stdout.strip() == "NOT_SERVING"
    assert down_json.returncode == 1 and json.loads(down_json.stdout) == {"status": "NOT_SERVING"}
