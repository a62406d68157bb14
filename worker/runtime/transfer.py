"""Host lists to device tensors without waiting for the device, and device tensors back to
host lists without making the host wait for work queued after them.

`torch.tensor(values, device="cuda")` copies from pageable host memory, and such a copy
synchronises the stream: the host waits for every kernel already queued. In the overlap loop
that is the previous step's forward, which the host was meant to run ahead of; in any loop it
is a round trip per call. Here the values go through pinned host memory and a non-blocking
copy, ordered on the stream like a kernel (torch's pinned-memory cache keeps the host buffer
alive until the copy has run). `to_device_many` also packs several lists into one copy.
Host buffers are built with numpy, whose list conversion is several times faster than
`torch.tensor`'s. Off CUDA the tensors stay on the CPU.

The way back (`Download`) matters as much: `t.tolist()` copies at the stream's *current*
position, so in the overlap loop, reading step N's tokens after step N+1 was launched waited
for N+1's whole forward too, and the device then idled while the host planned N+2. A
`Download` queues the copy right after step N's sampling, into pinned memory, and waits only
for that copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np
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


def to_device_many(segments: Sequence, device: torch.device | str) -> list[torch.Tensor]:
    """int64 1-D tensors of several segments (int lists, or numpy arrays, flattened) from one
    host buffer and one copy; each is a contiguous view starting 16-byte aligned."""
    sizes = [len(seg) if isinstance(seg, (list, tuple, range)) else int(np.size(seg))
             for seg in segments]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size + (-size % _ALIGN))
    host = np.zeros(starts[-1], dtype=np.int64)
    for start, size, seg in zip(starts, sizes, segments):
        if size:
            host[start:start + size] = np.ravel(seg) if isinstance(seg, np.ndarray) else seg
    packed = upload(torch.from_numpy(host), device)
    return [packed[start:start + size] for start, size in zip(starts, sizes)]


def padded_rows(rows: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """[len(rows), width] int64: each row's values, then zeros — built in numpy (a page table
    of a few hundred long sequences is 10^5-10^6 ids: Python-level padding and flattening
    would cost tens of milliseconds a step)."""
    lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lens.sum()))
    out = np.zeros((len(rows), width), dtype=np.int64)
    out[np.arange(width)[None, :] < lens[:, None]] = flat
    return out


class Download:
    """Device tensors copied to pinned host memory at this point of the stream; `lists()` waits
    for that copy only (not for work queued later) and returns them as lists (None stays
    None). Off CUDA the tensors are simply kept."""

    def __init__(self, tensors: Sequence[torch.Tensor | None]) -> None:
        self.event = None
        self.host: list[torch.Tensor | None] = []
        for t in tensors:
            if t is not None and t.device.type == "cuda":
                pinned = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                t = pinned.copy_(t, non_blocking=True)
                self.event = self.event or torch.cuda.Event()
            self.host.append(t)
        if self.event is not None:
            self.event.record()

    def lists(self) -> list:
        if self.event is not None:
            self.event.synchronize()
        return [None if t is None else t.tolist() for t in self.host]
