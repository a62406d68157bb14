"""Regenerates the checked-in Python stubs of proto/qnext/v1/*.proto into qnext/v1/ (the
import path mirrors the proto path, so the generated imports need no rewriting).

    python scripts/gen_protos.py [--out DIR]

Needs the pinned grpcio-tools (pyproject); tests/unit/test_protos.py checks that the files in
the repository are exactly what this produces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generate(out: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto under `out`/qnext/v1."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"  # well-known types
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out / "qnext" / "v1").glob("*_pb2*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT)
    files = generate(parser.parse_args().out)
    sys.stdout.write("".join(f"{f}\n" for f in files))


if __name__ == "__main__":
    main()
