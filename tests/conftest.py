"""Shared fixtures: tiny Qwen3-Next checkpoints written once per session, and TP identity reset."""

from __future__ import annotations

import pytest

from qnext.worker.layers.parallel import reset_tp_info


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(preset, **kwargs) -> path of a cached tiny HF checkpoint directory."""
    from qnext.worker.tiny import write_tiny_checkpoint

    made = {}

    def make(preset: str = "tiny", **kwargs):
        key = (preset, tuple(sorted(kwargs.items())))
        if key not in made:
            path = tmp_path_factory.mktemp(preset.replace("-", "_"))
            made[key] = write_tiny_checkpoint(path, preset, **kwargs)
        return made[key]

    return make


@pytest.fixture(autouse=True)
def _single_rank():
    reset_tp_info()
    yield
    reset_tp_info()


@pytest.fixture
def default_structlog():
    """structlog's default configuration before and after the test (it is process-global)."""
    import structlog

    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
