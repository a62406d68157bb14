"""Host lists to device tensors (runtime/transfer.py): packed segments keep their values,
dtype and order, each starts 16-byte aligned, numpy and empty segments work, and padded rows
put each row's ids first and zeros after."""

from __future__ import annotations

import numpy as np
import torch

from qnext.worker.runtime.transfer import Download, padded_rows, to_device, to_device_many


def test_packed_segments_keep_values_and_alignment():
    segments = [[3, 1, 4], [], list(range(1000, 1007)), np.array([[5, 9], [2, 6]]), [-1]]
    out = to_device_many(segments, "cpu")
    assert [t.tolist() for t in out] == [[3, 1, 4], [], list(range(1000, 1007)),
                                         [5, 9, 2, 6], [-1]]
    assert all(t.dtype == torch.int64 and t.is_contiguous() for t in out)
    assert all(t.data_ptr() % 16 == 0 for t in out if t.numel())


def test_to_device_keeps_the_dtype():
    t = to_device([0.5, 1.25], "cpu", torch.float32)
    assert t.dtype == torch.float32 and t.tolist() == [0.5, 1.25]


def test_padded_rows():
    rows = [(7, 8, 9), (), (4,), [1, 2, 3, 5]]
    got = padded_rows(rows, 5)
    assert got.dtype == np.int64 and got.shape == (4, 5)
    assert got.tolist() == [[7, 8, 9, 0, 0], [0] * 5, [4, 0, 0, 0, 0], [1, 2, 3, 5, 0]]


def test_download_off_cuda_keeps_the_tensors():
    t = torch.tensor([[1, 2], [3, 4]])
    got = Download([t, None, torch.tensor([0.5])]).lists()
    assert got == [[[1, 2], [3, 4]], None, [0.5]]
