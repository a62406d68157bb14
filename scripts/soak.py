"""Soak a real `qnext serve` (a script, not a CI test; tests/e2e/test_soak.py runs a short one).

For `--duration` seconds, `--concurrency` clients send random requests back to back, some
aborted, cancelled or given short deadlines, while an admin client switches the strategy,
resizes and flushes (soak_load.py). Afterwards it waits for the server to go idle, puts the
first plan back, flushes, and checks that every page and state slot is free (pool integrity
as Admin shows it). Reports outcomes (completed / aborted / cancelled / deadline exceeded / failed:
anything unintended), p50 / p99 latencies, the RSS of the front end and the worker before and
after, as JSON and markdown. Exit 1 when anything failed or a pool did not come back.

    python scripts/soak.py [--duration 600] [--concurrency 512] [--json F] [--markdown F]
                           [--addr H:P --admin-addr H:P --admin-token T [--pid SERVE_PID]]
                           [-- extra `qnext serve` flags]

Without `--addr` it starts `qnext serve` itself (embedded tiny model, free ports).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from soak_load import KINDS, SoakConfig, Tally, admin_loop, client

from qnext.v1 import admin_pb2 as a, admin_pb2_grpc, generation_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    addr: str
    admin_addr: str
    admin_token: str
    pid: int | None = None  # the `qnext serve` process: RSS of it and its worker


# -- the server's side ----------------------------------------------------------------------
def rss_mb(pid: int | None) -> dict[str, float] | None:
    """RSS (MiB) of `qnext serve` (`frontend`) and of its descendants (`worker`: the worker
    and its TP ranks), from /proc; None without a pid."""
    if pid is None:
        return None

    def rss(p: int) -> float:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def descendants(p: int) -> list[int]:
        kids = [int(k) for t in Path(f"/proc/{p}/task").iterdir()
                for k in (t / "children").read_text().split()]
        return kids + [d for k in kids for d in descendants(k)]

    return {"frontend": round(rss(pid), 1),
            "worker": round(sum(rss(p) for p in descendants(pid)), 1)}


async def _rss_timeline(pid: int | None, until: float, every: float) -> list[dict]:
    """`rss_mb(pid)` every `every` seconds until `until` (is memory still growing?)."""
    samples = []
    while pid is not None and (left := until - time.monotonic()) > 0:
        await asyncio.sleep(min(every, left))  # a sampling period, not a sync
        samples.append(rss_mb(pid))
    return samples


def _pools(mem: a.MemoryInfo) -> dict:
    return {"strategy": mem.strategy, "ratio": mem.mamba_full_memory_ratio,
            **{name: {k: getattr(pool, k) for k in ("total", "used", "cached", "free")}
               for name, pool in (("pages", mem.pages), ("state_slots", mem.state_slots))}}


async def _settle(admin, auth, cfg: SoakConfig, before: a.MemoryInfo) -> tuple[dict, float]:
    """Wait for idle, put the first plan back, flush: (pools now, seconds to idle)."""
    start = time.monotonic()
    while True:
        stats = await admin.GetStats(a.GetStatsRequest(), metadata=auth, timeout=60)
        if stats.num_running == stats.num_waiting == 0:
            break
        if time.monotonic() - start > cfg.idle_timeout:
            raise TimeoutError(f"not idle after {cfg.idle_timeout:.0f} s: {stats}")
        await asyncio.sleep(0.5)  # polling: Admin has no idle event to wait on
    waited = time.monotonic() - start
    strategy = {"off": a.RADIX_STRATEGY_OFF, "no_buffer": a.RADIX_STRATEGY_NO_BUFFER,
                "extra_buffer": a.RADIX_STRATEGY_EXTRA_BUFFER}[before.strategy]
    await admin.SetRadixStrategy(a.SetRadixStrategyRequest(strategy=strategy), metadata=auth,
                                 timeout=600)
    await admin.ResizeMambaCache(a.ResizeMambaCacheRequest(
        ratio=before.mamba_full_memory_ratio), metadata=auth, timeout=600)
    await admin.FlushCache(a.FlushCacheRequest(), metadata=auth, timeout=60)
    return _pools(await admin.GetMemory(a.GetMemoryRequest(), metadata=auth, timeout=60)), waited


def _integrity_ok(before: dict, after: dict) -> bool:
    """The first plan is back and every page and slot is free."""
    return all(after[n]["free"] == after[n]["total"] == before[n]["total"]
               and after[n]["used"] == after[n]["cached"] == 0 for n in ("pages", "state_slots"))


# -- a run ----------------------------------------------------------------------------------
def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"n": 0}
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)
    return {"n": len(ordered), "p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": at(1.0)}


async def run(target: Target, cfg: SoakConfig) -> dict:
    """Soak `target` with `cfg`; returns the report (see `markdown`)."""
    auth = [("authorization", f"Bearer {target.admin_token}")]
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target.addr, options=options) as data, \
            grpc.aio.insecure_channel(target.admin_addr) as control:
        gen = generation_pb2_grpc.GenerationStub(data)
        admin = admin_pb2_grpc.AdminStub(control)
        info = await admin.GetServerInfo(a.GetServerInfoRequest(), metadata=auth, timeout=60)
        vocab = json.loads(info.config_json)["model"]["vocab_size"]
        await admin.FlushCache(a.FlushCacheRequest(), metadata=auth, timeout=60)
        first = await admin.GetMemory(a.GetMemoryRequest(), metadata=auth, timeout=60)
        tally, rss_before, start = Tally(), rss_mb(target.pid), time.monotonic()
        until = start + cfg.duration
        during, *_ = await asyncio.gather(
            _rss_timeline(target.pid, until, cfg.duration / 10),
            admin_loop(admin, auth, cfg, until, tally),
            *(client(i, gen, cfg, vocab, until, tally) for i in range(cfg.concurrency)))
        loaded = time.monotonic() - start
        after, idle_s = await _settle(admin, auth, cfg, first)
        check = await admin.CheckIntegrity(a.CheckIntegrityRequest(), metadata=auth,
                                           timeout=60)
    before = _pools(first)
    outcomes = Counter()
    for (_, outcome), n in tally.outcomes.items():
        outcomes[outcome] += n
    return {
        "config": asdict(cfg), "seconds": round(loaded, 1), "idle_after_s": round(idle_s, 1),
        "requests": sum(outcomes.values()),
        "outcomes": {k: outcomes[k] for k in ("completed", "aborted", "cancelled",
                                              "deadline_exceeded", "failed")},
        "by_kind": {kind: {o: n for (k, o), n in sorted(tally.outcomes.items()) if k == kind}
                    for kind, _ in KINDS},
        "tokens": tally.tokens, "tokens_per_s": round(tally.tokens / loaded, 1),
        "latency": {"ttft": _percentiles(tally.ttft), "e2e": _percentiles(tally.e2e),
                    "admin": _percentiles(tally.admin_latency)},
        "admin": {f"{op} {outcome}": n for (op, outcome), n in sorted(tally.admin.items())},
        "failures": tally.failures,
        "rss_mb": {"before": rss_before, "during": during, "after": rss_mb(target.pid)},
        "pools": {"before": before, "after": after, "integrity": check.message or "ok",
                  "ok": _integrity_ok(before, after) and check.ok and check.idle},
    }


def markdown(report: dict) -> str:
    """The report as a markdown table (the numbers docs/reliability.md records)."""
    out, lat, rss = report["outcomes"], report["latency"], report["rss_mb"]
    cfg = report["config"]
    rows = [("load", f"{cfg['concurrency']} clients, new requests for {cfg['duration']:g} s, "
                     f"the last done at {report['seconds']} s (idle {report['idle_after_s']} s "
                     "later)"),
            ("requests", f"{report['requests']}: " + ", ".join(f"{n} {k}"
                                                               for k, n in out.items())),
            ("tokens received", f"{report['tokens']} ({report['tokens_per_s']} /s)")]
    rows += [(f"{name} latency", f"p50 {v.get('p50_ms')} ms, p99 {v.get('p99_ms')} ms, "
                                 f"max {v.get('max_ms')} ms (n={v['n']})")
             for name, v in lat.items()]
    rows += [("admin calls", ", ".join(f"{n} {k}" for k, n in report["admin"].items()) or "none")]
    if rss["before"] is not None:
        rows += [(f"RSS {p} (MiB)", f"{rss['before'][p]} before; during: "
                 + ", ".join(str(sample[p]) for sample in rss["during"])
                 + f"; {rss['after'][p]} after") for p in ("frontend", "worker")]
    pools = report["pools"]["after"]
    rows += [("pools after", f"pages {pools['pages']['free']}/{pools['pages']['total']} free, "
                             f"slots {pools['state_slots']['free']}/"
                             f"{pools['state_slots']['total']} free, integrity "
                             f"{'OK' if report['pools']['ok'] else 'BROKEN'}")]
    table = ["| what | result |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(table + [f"- failure: {f}" for f in report["failures"]]) + "\n"


def passed(report: dict) -> bool:
    return report["outcomes"]["failed"] == 0 and report["pools"]["ok"]


# -- the command ----------------------------------------------------------------------------
class Spawned:
    """`qnext serve` started here on free ports (the embedded tiny model unless `flags` say
    otherwise); its log goes to a temporary file."""

    def __init__(self, flags: list[str]) -> None:
        import secrets
        import socket
        import subprocess
        import sys
        import tempfile

        def free_port() -> int:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]

        port, admin_port, token = free_port(), free_port(), secrets.token_urlsafe(16)
        self.log = Path(tempfile.mkstemp(prefix="qnext-soak-", suffix=".log")[1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qnext.cli.main", "serve", "--port", str(port),
             "--admin-port", str(admin_port), "--admin-token", token, *flags],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        self.target = Target(f"127.0.0.1:{port}", f"127.0.0.1:{admin_port}", token,
                             self.proc.pid)

    def wait_serving(self, timeout: float = 600.0) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.target.addr) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=True)
            for reply in watch:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        raise RuntimeError(f"qnext serve never served; log: {self.log}")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=512)
    parser.add_argument("--admin-every", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--addr", help="a running server's data plane (else one is started)")
    parser.add_argument("--admin-addr", default="127.0.0.1:50052")
    parser.add_argument("--admin-token")
    parser.add_argument("--pid", type=int, help="with --addr: its `qnext serve` pid (RSS)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--markdown", type=Path, help="write the markdown table here")
    parser.add_argument("serve_flags", nargs="*", help="after --: flags for `qnext serve`")
    args = parser.parse_args()
    cfg = SoakConfig(duration=args.duration, concurrency=args.concurrency,
                     admin_every=args.admin_every, seed=args.seed)
    if args.duration <= 0 or args.concurrency < 1 or args.admin_every <= 0:
        parser.error("--duration and --admin-every must be > 0, --concurrency >= 1")
    if args.addr and not args.admin_token:
        parser.error("--addr needs --admin-token")
    server = None if args.addr else Spawned(args.serve_flags)
    try:
        if server is not None:
            server.wait_serving()
        target = server.target if server else Target(args.addr, args.admin_addr,
                                                      args.admin_token, args.pid)
        report = asyncio.run(run(target, cfg))
    finally:
        if server is not None:
            print(f"qnext serve exited {server.stop()}; log: {server.log}")
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0 if passed(report) else 1


if __name__ == "__main__":
    raise SystemExit(main())
