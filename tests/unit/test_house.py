"""House rules that can fail: every module is on the architecture map, files stay under 400
lines of at most 100 columns, kernels import only torch/triton, the scheduler package never
imports torch, and no top-level `worker` / `kernels` / `cli` module exists."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("qnext", "qnext_grpc", "worker", "kernels", "cli")


def _generated(path: Path) -> bool:
    """Protobuf stubs (scripts/gen_protos.py): not hand-written, so not held to these rules."""
    return path.name.endswith(("_pb2.py", "_pb2_grpc.py"))


def _modules() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if not _generated(p))


def test_every_module_is_on_the_architecture_map():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    missing = [str(p.relative_to(ROOT)) for p in _modules()
               if f"`{p.relative_to(ROOT).as_posix()}`" not in text]
    assert not missing, f"add to docs/ARCHITECTURE.md: {missing}"


def test_every_module_has_a_docstring():
    bare = [str(p.relative_to(ROOT)) for p in _modules() if not ast.get_docstring(
        ast.parse(p.read_text()))]
    assert not bare, bare


def test_files_stay_small():
    files = _modules() + sorted((ROOT / "tests").rglob("*.py"))
    big = [f"{p.relative_to(ROOT)} ({n})" for p in files
           if (n := len(p.read_text().splitlines())) > 400]
    assert not big, f"split by concept: {big}"


def test_lines_fit_100_columns():
    files = _modules() + sorted((ROOT / "tests").rglob("*.py")) \
        + sorted((ROOT / "scripts").rglob("*.py"))
    long = [f"{p.relative_to(ROOT)}:{i}" for p in files
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > 100]
    assert not long, f"wrap at 100 columns: {long}"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            inside = node.module.startswith("qnext.kernels")
            names.add("qnext.kernels" if inside else node.module.split(".")[0])
    return names


def test_kernels_import_only_torch_and_triton():
    allowed = {"__future__", "torch", "triton", "math", "os", "typing", "dataclasses", "functools",
               "collections",
               "qnext.kernels"}
    for path in (ROOT / "kernels").rglob("*.py"):
        extra = _imports(path) - allowed
        assert not extra, f"{path.name} imports {extra}"


@pytest.mark.parametrize("code", [
    "import qnext.worker.sched, sys; assert 'torch' not in sys.modules",
    "import qnext.worker.config, sys; assert 'torch' not in sys.modules",
    "import qnext.cli.admin, sys; assert 'torch' not in sys.modules",
])
def test_torch_free_modules(code):
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_no_generic_top_level_names(tmp_path):
    code = ("import importlib.util as u; "
            "assert all(u.find_spec(n) is None for n in ('worker', 'kernels', 'cli'))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_every_package_is_installed():
    """pyproject's explicit package list must name every package folder (wheels need it)."""
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                   ["packages"])
    names = {"worker": "qnext.worker", "kernels": "qnext.kernels", "cli": "qnext.cli",
             "qnext": "qnext", "qnext_grpc": "qnext_grpc"}
    found = set()
    for top, name in names.items():
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / top).parts
            found.add(".".join([name, *parts]))
    assert found <= declared, f"add to pyproject packages: {sorted(found - declared)}"
