"""The control plane and the server's life, against real processes on 127.0.0.1: Admin needs
the token; `memory` matches the engine's plan; CheckIntegrity under and after load; the
qnext-admin CLI against a live server;
reflection; health follows the worker (attach mode, worker killed mid-stream); a client built
from the .proto files alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from qnext.cli import options as o
from qnext.v1 import admin_pb2, admin_pb2_grpc, generation_pb2 as g, generation_pb2_grpc
from qnext.worker.engine import Engine
from tests.e2e.servers import (Server, Worker, idle, integrity, serve_config, until,
                               wait_for_status)

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ("--page-size", "16", "--max-mamba-cache-size", "40", "--mamba-scheduler-strategy",
         "extra_buffer")


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    server = Server(path, *FLAGS)
    yield path, server
    assert server.stop() == 0


def test_admin_needs_the_token(setup):
    _, server = setup
    admin = admin_pb2_grpc.AdminStub(server.control)
    for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", server.token)]):
        with pytest.raises(grpc.RpcError) as err:
            admin.GetStats(admin_pb2.GetStatsRequest(), metadata=metadata, timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert admin.GetStats(admin_pb2.GetStatsRequest(), metadata=server.auth, timeout=10)
    with pytest.raises(grpc.RpcError) as err:  # Admin is not served on the data port
        admin_pb2_grpc.AdminStub(server.data).GetStats(admin_pb2.GetStatsRequest(), timeout=10)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_memory_matches_the_engine_plan_and_the_cli(setup):
    path, server = setup
    admin = admin_pb2_grpc.AdminStub(server.control)
    mem = admin.GetMemory(admin_pb2.GetMemoryRequest(), metadata=server.auth, timeout=10)
    plan = Engine(serve_config(path, page_size=16, max_mamba_cache_size=40,
                               mamba_scheduler_strategy=o.RadixStrategy.extra_buffer)
                  ).memory.describe()
    assert mem.strategy == "extra_buffer" and mem.page_size == 16
    for key in ("kv_pool_bytes", "state_pool_bytes", "state_bytes_per_slot",
                "kv_bytes_per_token", "max_total_tokens", "max_running_requests"):
        assert getattr(mem, key) == plan[key], key
    assert mem.pages.total == plan["num_pages"] - 1 and mem.state_slots.total == 40
    env = {**os.environ, "QNEXT_ADMIN_TOKEN": server.token}
    out = subprocess.run([sys.executable, "-m", "qnext.cli.admin", "--addr",
                          f"127.0.0.1:{server.admin_port}", "--json", "memory"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert int(doc["state_pool_bytes"]) == plan["state_pool_bytes"]
    assert int(doc["state_slots"]["total"]) == 40
    table = subprocess.run([sys.executable, "-m", "qnext.cli.admin", "--addr",
                            f"127.0.0.1:{server.admin_port}", "stats"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert table.returncode == 0 and "extra_buffer" in table.stdout


def test_check_integrity_under_and_after_load(setup):
    _, server = setup
    admin = admin_pb2_grpc.AdminStub(server.control)
    gen = generation_pb2_grpc.GenerationStub(server.data)
    with pytest.raises(grpc.RpcError) as err:  # the token is needed here too
        admin.CheckIntegrity(admin_pb2.CheckIntegrityRequest(), timeout=10)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    stream = gen.Stream(g.GenerateRequest(text="busy", sampling=g.SamplingParams(
        temperature=0, max_new_tokens=10**4, ignore_eos=True)), timeout=60)
    assert next(stream).chunk.token_ids
    try:
        busy = integrity(admin, server.auth)  # ok while a request runs: not idle
        assert not busy.idle and busy.pages.used > 0 and busy.state_slots.used > 0
    finally:
        stream.cancel()
    prompt = g.TokenIds(ids=list(range(1, 140)))
    for n in (2, 3):  # the second one reuses the first one's cached prefix
        gen.Generate(g.GenerateRequest(token_ids=prompt, sampling=g.SamplingParams(
            max_new_tokens=n)), timeout=60)
    until(lambda: idle(admin, server.auth))
    report = integrity(admin, server.auth)
    memory = admin.GetMemory(admin_pb2.GetMemoryRequest(), metadata=server.auth, timeout=10)
    assert report.idle and report.pages.cached > 0
    assert (report.pages, report.state_slots) == (memory.pages, memory.state_slots)
    env = {**os.environ, "QNEXT_ADMIN_TOKEN": server.token}
    cli = subprocess.run([sys.executable, "-m", "qnext.cli.admin", "--addr",
                          f"127.0.0.1:{server.admin_port}", "check"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.split()[:2] == ["integrity", "ok"]


def test_reflection_lists_the_services_on_both_ports(setup):
    _, server = setup
    for channel, service in ((server.data, "qnext.v1.Generation"),
                             (server.control, "qnext.v1.Admin")):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert {service, "grpc.health.v1.Health"} <= names


def test_health_follows_the_worker(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    worker = Worker(path)
    server = Server(path, worker=worker.address)
    try:
        gen = generation_pb2_grpc.GenerationStub(server.data)
        stream = gen.Stream(g.GenerateRequest(text="x", sampling=g.SamplingParams(
            temperature=0, max_new_tokens=10**4, ignore_eos=True)), timeout=60)
        assert next(stream).chunk.token_ids
        worker.kill()
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        wait_for_status(server.address, health_pb2.HealthCheckResponse.NOT_SERVING,
                        server.proc, server.log, timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            gen.Generate(g.GenerateRequest(text="y"), timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        worker = Worker(path, address=worker.address)  # a new worker at the same place
        wait_for_status(server.address, health_pb2.HealthCheckResponse.SERVING,
                        server.proc, server.log, timeout=60)
        assert gen.Generate(g.GenerateRequest(text="y"), timeout=60).token_ids
    finally:
        assert server.stop() == 0
        worker.kill()


def test_a_client_from_the_proto_files_alone(setup, tmp_path):
    _, server = setup
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = [str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto")]
    assert protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", *protos]) == 0
    for package in (tmp_path / "qnext", tmp_path / "qnext" / "v1"):
        (package / "__init__.py").write_text("")  # a plain package: only the generated stubs
    client = textwrap.dedent(f"""
        import sys, grpc
        import qnext
        assert qnext.__file__.startswith("{tmp_path}"), qnext.__file__  # not the project
        from qnext.v1 import generation_pb2 as g, generation_pb2_grpc as gg
        from qnext.v1 import admin_pb2 as a, admin_pb2_grpc as ag
        gen = gg.GenerationStub(grpc.insecure_channel("{server.address}"))
        req = g.GenerateRequest(text="hello", sampling=g.SamplingParams(max_new_tokens=4,
                                                                        temperature=0))
        print(len(gen.Generate(req, timeout=60).token_ids))
        print(sum(len(m.chunk.token_ids) for m in gen.Stream(req, timeout=60)))
        admin = ag.AdminStub(grpc.insecure_channel("127.0.0.1:{server.admin_port}"))
        auth = [("authorization", "Bearer {server.token}")]
        print(admin.GetStats(a.GetStatsRequest(), metadata=auth, timeout=10).num_requests > 0)
    """)
    out = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(tmp_path),
                                            "PATH": os.environ.get("PATH", "")}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "4", "True"]


def test_drain_refuses_new_requests_until_resume(setup):
    _, server = setup
    admin = admin_pb2_grpc.AdminStub(server.control)
    gen = generation_pb2_grpc.GenerationStub(server.data)
    request = g.GenerateRequest(text="z", sampling=g.SamplingParams(max_new_tokens=2))
    assert admin.Drain(admin_pb2.DrainRequest(), metadata=server.auth, timeout=10)
    try:
        assert admin.GetStats(admin_pb2.GetStatsRequest(), metadata=server.auth).draining
        with pytest.raises(grpc.RpcError) as err:
            gen.Generate(request, timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "draining" in err.value.details()
    finally:
        admin.Resume(admin_pb2.ResumeRequest(), metadata=server.auth, timeout=10)
    assert gen.Generate(request, timeout=60).complete.usage.completion_tokens == 2


def test_flush_dry_run_and_log_level(setup):
    _, server = setup
    admin = admin_pb2_grpc.AdminStub(server.control)
    gen = generation_pb2_grpc.GenerationStub(server.data)
    gen.Generate(g.GenerateRequest(token_ids=g.TokenIds(ids=list(range(1, 140))),
                                   sampling=g.SamplingParams(max_new_tokens=2)), timeout=60)
    until(lambda: idle(admin, server.auth))  # the answer may come before its pages go back
    before = admin.GetMemory(admin_pb2.GetMemoryRequest(), metadata=server.auth)
    plan = admin.ResizeMambaCache(admin_pb2.ResizeMambaCacheRequest(ratio=0.3, dry_run=True),
                                  metadata=server.auth, timeout=30)
    assert not plan.applied and plan.memory.state_pool_bytes != before.state_pool_bytes
    assert admin.GetMemory(admin_pb2.GetMemoryRequest(), metadata=server.auth) == before
    assert before.pages.cached > 0
    flushed = admin.FlushCache(admin_pb2.FlushCacheRequest(), metadata=server.auth)
    assert flushed.freed_pages == before.pages.cached
    after = admin.GetMemory(admin_pb2.GetMemoryRequest(), metadata=server.auth)
    assert after.pages.cached == 0 and after.pages.free == after.pages.total
    assert admin.SetLogLevel(admin_pb2.SetLogLevelRequest(level="debug"), metadata=server.auth)
    with pytest.raises(grpc.RpcError) as err:
        admin.SetLogLevel(admin_pb2.SetLogLevelRequest(level="loud"), metadata=server.auth)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "level" in err.value.details()
    admin.SetLogLevel(admin_pb2.SetLogLevelRequest(level="info"), metadata=server.auth)


def test_serve_without_a_model_uses_the_embedded_tiny_one(tmp_path):
    server = Server(None, home=tmp_path)  # a fresh machine: nothing cached under ~
    try:
        gen = generation_pb2_grpc.GenerationStub(server.data)
        reply = gen.Generate(g.GenerateRequest(text="hello", sampling=g.SamplingParams(
            max_new_tokens=3)), timeout=60)
        assert reply.complete.usage.completion_tokens == 3
        assert (tmp_path / ".cache" / "qnext" / "tiny" / "config.json").is_file()
    finally:
        assert server.stop() == 0


def _listening_hosts(port: int) -> set[str]:
    """Local IPv4 / IPv6 addresses (hex, as /proc/net shows them) listening on `port`."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                hosts.add(host)
    return hosts


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_default_admin_is_loopback_with_a_private_token_file(tmp_path):
    """Without --admin-host / --admin-token: Admin listens on 127.0.0.1 only, the random token
    is written with mode 0600 under ~/.cache/qnext, works, and never reaches the log."""
    from tests.e2e.servers import SERVING, channel, qnext
    from tests.net import free_port

    port, admin_port, log = free_port(), free_port(), tmp_path / "serve.log"
    proc = qnext("serve", "--port", str(port), "--admin-port", str(admin_port), log=log,
                 home=tmp_path)
    try:
        wait_for_status(f"127.0.0.1:{port}", SERVING, proc, log)
        hosts = _listening_hosts(admin_port)  # 127.0.0.1 as IPv4 or IPv4-mapped IPv6
        assert hosts and hosts <= {"0100007F", "0000000000000000FFFF00000100007F"}, hosts
        token_file = tmp_path / ".cache" / "qnext" / "admin-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        with channel(f"127.0.0.1:{admin_port}") as control:
            admin = admin_pb2_grpc.AdminStub(control)
            assert admin.GetStats(admin_pb2.GetStatsRequest(), timeout=30,
                                  metadata=[("authorization", f"Bearer {token}")])
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    assert token not in log.read_text() and str(token_file) in log.read_text()


def test_the_token_check_is_constant_time():
    """By construction: the comparison is hmac.compare_digest (a test, so a rewrite that
    drops it fails here)."""
    import inspect

    from qnext_grpc.server import TokenAuth

    source = inspect.getsource(TokenAuth.intercept_service)
    assert "hmac.compare_digest(" in source and "==" not in source
