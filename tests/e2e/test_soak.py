"""A short soak (scripts/soak.py's core, 25 s, 64 clients) against a real `qnext serve`:
random lengths, aborts, cancels, deadlines, strategy switches, resizes and flushes end with no
unintended failure, every kind of request and admin call happened, and afterwards the first
memory plan is back with every page and state slot free. The full soak (≥ 500 clients,
≥ 10 minutes) is run by hand: docs/reliability.md."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e.servers import Server

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_short_soak(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import soak

    server = Server(None)
    try:
        target = soak.Target(server.address, f"127.0.0.1:{server.admin_port}", server.token,
                             server.proc.pid)
        report = asyncio.run(soak.run(target, soak.SoakConfig(
            duration=25, concurrency=64, admin_every=2.5, max_new=48, idle_timeout=60)))
    finally:
        assert server.stop() == 0, server.log.read_text()[-3000:]
    assert soak.passed(report), soak.markdown(report)
    assert report["failures"] == [] and report["outcomes"]["failed"] == 0
    assert all(report["outcomes"][k] > 0
               for k in ("completed", "aborted", "cancelled", "deadline_exceeded"))
    assert {op.split()[0] for op in report["admin"]} == {"strategy", "resize", "flush"}
    before, after = report["pools"]["before"], report["pools"]["after"]
    assert (after["strategy"], after["ratio"]) == (before["strategy"], before["ratio"])
    for pool in ("pages", "state_slots"):
        assert after[pool]["free"] == after[pool]["total"] == before[pool]["total"] > 0
    assert report["rss_mb"]["after"]["worker"] > 0
