"""The deployment files in docker/ agree with the code: the image copies every package the
install needs, every `qnext serve` flag they pass exists, and the ports of the entrypoint, the
probes, the balancer and the Service are the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main
import yaml

from qnext.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def _json_list(instruction: str) -> list[str]:
    found = re.search(rf'^{instruction} (\[.*\])$', _dockerfile(), re.M)
    assert found, instruction
    return yaml.safe_load(found.group(1))


def _serve_options() -> set[str]:
    command = typer.main.get_command(app).commands["serve"]
    return {opt for param in command.params for opt in param.opts}


def _flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--")]


def _entry_port() -> int:
    entry = _json_list("ENTRYPOINT")
    return int(entry[entry.index("--port") + 1])


def test_image_copies_every_package_dir():
    line = re.search(r"^package-dir = \{(.*)\}$", (ROOT / "pyproject.toml").read_text(), re.M)
    dirs = set(re.findall(r'= "(\w+)"', line.group(1)))
    assert {"worker", "kernels", "cli", "qnext_grpc", "qnext"} <= dirs
    copied = set(re.findall(r"^COPY (\S+) \./\1$", _dockerfile(), re.M))
    assert dirs <= copied, f"Dockerfile misses {dirs - copied}"


def test_every_flag_passed_to_serve_exists():
    options = _serve_options()
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    k8s = list(yaml.safe_load_all((DOCKER / "k8s" / "qnext.yaml").read_text()))
    container = k8s[0]["spec"]["template"]["spec"]["containers"][0]
    passed = (_json_list("ENTRYPOINT")[2:] + _json_list("CMD")
              + compose["x-qnext"]["command"] + container["args"])
    unknown = set(_flags(passed)) - options
    assert not unknown, f"not options of qnext serve: {unknown}"


def test_ports_agree():
    port = _entry_port()
    k8s = list(yaml.safe_load_all((DOCKER / "k8s" / "qnext.yaml").read_text()))
    container = k8s[0]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "grpc", "containerPort": port} in container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port
    envoy = yaml.safe_load((DOCKER / "envoy.yaml").read_text())
    endpoints = envoy["static_resources"]["clusters"][0]["load_assignment"]["endpoints"]
    addresses = [e["endpoint"]["address"]["socket_address"] for e in endpoints[0]["lb_endpoints"]]
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert {a["address"] for a in addresses} == {s for s in compose["services"] if s != "balancer"}
    assert {a["port_value"] for a in addresses} == {port}
    health = yaml.safe_load(re.search(r'CMD (\["qnext-admin".*\])$', _dockerfile(),
                                      re.M).group(1))
    assert health[health.index("--addr") + 1].endswith(f":{port}")


@pytest.mark.parametrize("name", ["compose.yaml", "envoy.yaml", "k8s/qnext.yaml"])
def test_yaml_parses(name):
    assert list(yaml.safe_load_all((DOCKER / name).read_text()))
