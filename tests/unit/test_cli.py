"""The `qnext` / `qnext-admin` CLIs as real processes: tiny checkpoints, offline generation, and
bad input -> exit code 2 with a one-line reason."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args: str, module: str = "qnext.cli.main") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=300)


def test_make_tiny_then_generate(tmp_path):
    made = _run("make-tiny", str(tmp_path / "m"), "--shards", "2")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    args = ("generate", "--model-path", str(tmp_path / "m"), "--prompt", "abc", "--prompt",
            "a longer second prompt", "--max-new-tokens", "5", "--chunked-prefill-size", "4")
    first = _run(*args)
    again = _run(*args, "--disable-overlap-schedule", "--page-size", "4")
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout  # greedy is deterministic, whatever the loop
    assert len(first.stdout.splitlines()) == 2


@pytest.mark.parametrize("args,reason", [
    (["generate", "--prompt", ""], "prompt is empty"),
    (["generate", "--max-new-tokens", "0"], "max_new_tokens"),
    (["generate", "--page-size", "0"], "--page-size"),
    (["generate", "--mem-fraction-static", "0.0001"], "--mem-fraction-static"),
    (["generate", "--tp", "0"], "--tp"),
    (["generate", "--model-path", "/nonexistent/qnext"], "no config.json"),
    (["make-tiny", "/tmp/x", "--preset", "huge"], "--preset must be one of"),
])
def test_bad_input_exits_2_with_reason(args, reason, tmp_path):
    result = _run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], result.stderr


def test_bad_checkpoint_is_a_clean_error(tmp_path, tiny_checkpoint):
    import shutil

    bad = shutil.copytree(tiny_checkpoint("tiny"), tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    result = _run("generate", "--model-path", str(bad), "--max-new-tokens", "2")
    assert result.returncode == 2
    assert "model.safetensors" in result.stderr and "Traceback" not in result.stderr


def test_admin_cli_runs():
    result = _run("version", module="qnext.cli.admin")
    assert result.returncode == 0 and result.stdout.strip()
