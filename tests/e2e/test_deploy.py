"""The image's HEALTHCHECK command (docker/Dockerfile) against a real server: exit 0 while it
serves, non-zero when nothing listens."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.e2e.servers import Server
from tests.net import free_port

DOCKERFILE = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile"


def _healthcheck(address: str) -> subprocess.CompletedProcess:
    found = re.search(r'CMD (\["qnext-admin".*\])$', DOCKERFILE.read_text(), re.M)
    args = yaml.safe_load(found.group(1))
    args[args.index("--addr") + 1] = address
    return subprocess.run([sys.executable, "-m", "qnext.cli.admin", *args[1:]],
                          capture_output=True, text=True, timeout=60)


def test_healthcheck_command_follows_the_server(tiny_checkpoint):
    server = Server(tiny_checkpoint("tiny"))
    try:
        run = _healthcheck(server.address)
        assert run.returncode == 0, run.stderr
        assert "SERVING" in run.stdout
    finally:
        assert server.stop() == 0
    assert _healthcheck(f"127.0.0.1:{free_port()}").returncode != 0
