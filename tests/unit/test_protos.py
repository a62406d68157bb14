"""The checked-in stubs are exactly what the pinned grpcio-tools makes of the .proto files, and
every message, field, enum value, service and rpc in them carries a comment."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts/gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_stubs_match_a_fresh_generation(tmp_path):
    fresh = _gen_module().generate(tmp_path)
    assert fresh, "no stubs generated"
    for path in fresh:
        checked_in = ROOT / "qnext" / "v1" / path.name
        assert checked_in.is_file(), f"{path.name} is not checked in"
        assert checked_in.read_bytes() == path.read_bytes(), \
            f"{path.name} drifted: run python scripts/gen_protos.py"
    names = {p.name for p in fresh} | {"__init__.py"}
    assert {p.name for p in (ROOT / "qnext" / "v1").iterdir() if p.suffix in (".py", ".pyi")} \
        == names, "stale stub files in qnext/v1"


_DECL = re.compile(r"^\s*(message|enum|service|rpc|oneof|optional|repeated|map<|string|bool|"
                   r"u?int(32|64)|double|float|bytes|[A-Z]\w*\s+\w+\s*=|[A-Z_0-9]+\s*=)")


def test_every_proto_declaration_is_documented():
    for proto in sorted((ROOT / "proto").rglob("*.proto")):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            if not _DECL.match(line) or line.strip().startswith("oneof"):
                continue
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("//"), f"{proto.name}:{i + 1} undocumented: {line.strip()}"


def test_stubs_import_without_torch():
    code = ("import sys; from qnext.v1 import generation_pb2_grpc, admin_pb2_grpc, "
            "worker_pb2_grpc; assert 'torch' not in sys.modules")
    import subprocess
    subprocess.run([sys.executable, "-c", code], check=True)
