"""Parallel shard reads: every tensor exactly once whatever the number of readers, a damaged
shard named in the error while other readers run, and a consumer that stops early stops the
reader threads (no thread left behind, no hang)."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
from safetensors.torch import load_file

from qnext.worker.runtime.weights import CheckpointError, checkpoint_files, iter_checkpoint


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("qnext-shard")]


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_every_tensor_exactly_once(tiny_checkpoint, workers):
    path = tiny_checkpoint("tiny", num_shards=4)
    want = {}
    for file in checkpoint_files(path):
        want.update(load_file(str(file)))
    got = list(iter_checkpoint(path, workers=workers, progress=False))
    assert sorted(name for name, _ in got) == sorted(want)
    for name, tensor in got:
        assert tensor.equal(want[name]), name
    assert not _reader_threads()


def test_a_damaged_shard_is_named(tiny_checkpoint, tmp_path):
    bad = shutil.copytree(tiny_checkpoint("tiny", num_shards=4), tmp_path / "ck")
    victim = sorted(set(json.loads((bad / "model.safetensors.index.json").read_text())
                        ["weight_map"].values()))[2]
    data = (bad / victim).read_bytes()
    (bad / victim).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=victim):
        list(iter_checkpoint(bad, workers=4, progress=False))
    assert not _reader_threads()


def test_stopping_early_stops_the_readers(tiny_checkpoint):
    reader = iter_checkpoint(tiny_checkpoint("tiny", num_shards=4), workers=4, progress=False)
    next(reader)
    reader.close()  # what load_weights' exception does to the generator
    assert not _reader_threads()
