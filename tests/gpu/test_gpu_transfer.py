"""Device results to the host (`runtime/transfer.py`): a `Download` waits for its own copy,
never for work queued after it — what lets the overlap loop read step N while N+1 runs."""

from __future__ import annotations

import pytest
import torch

from qnext.worker.runtime.transfer import Download

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_download_does_not_wait_for_later_work():
    x = torch.arange(6, device="cuda").view(2, 3)
    download = Download([x * 2, None])
    torch.cuda._sleep(2_000_000_000)  # about a second of device spin queued after the copy
    assert download.lists() == [[[0, 2, 4], [6, 8, 10]], None]
    assert not torch.cuda.current_stream().query()  # the spin still runs: nobody waited for it
    torch.cuda.synchronize()


def test_download_copies_at_its_place_in_the_stream():
    x = torch.zeros(4, device="cuda")
    download = Download([x])
    x.fill_(7.0)  # queued after the copy: must not show up in it
    assert download.lists() == [[0.0] * 4]
