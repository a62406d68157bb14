"""Host lists to device tensors without waiting for the device.

`torch.tensor(values, device="cuda")` copies from pageable host memory, and such a copy
synchronises the stream: the host waits for every kernel already queued. In the overlap loop
that is the previous step's forward, which the host was meant to run ahead of; in any loop it
is a round trip per call. Here the values go through pinned host memory and a non-blocking
copy, ordered on the stream like a kernel (torch's pinned-memory cache keeps the host buffer
alive until the copy has run). `to_device_many` also packs several lists into one copy.
Off CUDA these are plain `torch.tensor` calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_ALIGN = 2  # int64 elements: every packed segment starts 16-byte aligned


def upload(cpu: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`, copied without a host sync when that is CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return cpu.to(device)
    return cpu.pin_memory().to(device, non_blocking=True)


def to_device(values, device: torch.device | str,
              dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """torch.tensor(values, dtype=dtype) on `device`, without a host sync."""
    return upload(torch.tensor(values, dtype=dtype), device)


def to_device_many(lists: Sequence[Sequence[int]],
                   device: torch.device | str) -> list[torch.Tensor]:
    """int64 1-D tensors of several int lists from one host buffer and one copy; each is a
    contiguous view starting 16-byte aligned."""
    flat: list[int] = []
    starts = []
    for values in lists:
        starts.append(len(flat))
        flat.extend(values)
        flat.extend([0] * (-len(flat) % _ALIGN))
    packed = to_device(flat, device)
    return [packed[s:s + len(values)] for s, values in zip(starts, lists)]
