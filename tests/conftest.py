"""Shared fixtures: tiny Qwen3-Next checkpoints written once per session, and TP identity reset;
QNEXT_TEST_SHARD=i/n keeps the i-th of n contiguous slices of the collected tests (several
processes share one long GPU file: scripts/gpu_tests.sh `name:n`)."""

from __future__ import annotations

import os

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


def pytest_collection_modifyitems(config, items):
    shard = os.environ.get("QNEXT_TEST_SHARD")
    if not shard:
        return
    index, count = (int(part) for part in shard.split("/"))
    if not 0 <= index < count:
        raise pytest.UsageError(f"QNEXT_TEST_SHARD={shard}: want i/n with 0 <= i < n")
    slice_of = [k * count // len(items) for k in range(len(items))]
    config.hook.pytest_deselected(items=[t for t, i in zip(items, slice_of) if i != index])
    items[:] = [t for t, i in zip(items, slice_of) if i == index]
