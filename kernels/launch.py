"""Launcher helpers shared by the Triton kernels: where a kernel may run, shared input checks,
the device's SM count for grid sizing.

Kernels run on CUDA tensors; under Triton's interpreter (`TRITON_INTERPRET=1`, CPU only, slow)
they also accept CPU tensors, which lets the kernel tests run on a machine without a GPU.
Imports only torch (and os, functools).
"""

from __future__ import annotations

import functools
import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def num_sms(device_index: int | None) -> int:
    """Streaming multiprocessors of CUDA device `device_index` (None: the current one)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


MAX_GRID_YZ = 65535  # CUDA's limit on a grid's y and z extents

PDL = os.environ.get("QNEXT_PDL", "1") != "0"


@functools.cache
def _sm90_or_later(device_index: int | None) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def pdl(device: torch.device) -> bool:
    """Whether kernels on `device` take programmatic dependent launch (`launch_pdl=True`: the
    launch may start while the kernel before it drains; the kernel calls `gdc_wait` before it
    reads what that one wrote): sm_90 or later, not under the interpreter, QNEXT_PDL != 0."""
    return PDL and device.type == "cuda" and not interpreting() and _sm90_or_later(device.index)


def pdl_meta(device: torch.device, use_pdl: bool | None = None) -> dict:
    """Launch arguments of a kernel with a `PDL` constexpr: PDL (use_pdl, default `pdl`), and
    `launch_pdl=True` when it is set."""
    use_pdl = pdl(device) if use_pdl is None else use_pdl
    return dict(PDL=True, launch_pdl=True) if use_pdl else dict(PDL=False)


def trigger_meta(device: torch.device) -> dict:
    """Launch argument of a kernel with a `TRIGGER` constexpr (kernels launched without PDL
    themselves, e.g. the norm before the MoE router): set when `pdl` is, and the kernel then
    calls `gdc_launch_dependents` first, so that a PDL launch after it may start its own
    preamble (the router's weights) while it runs. That launch still waits (`gdc_wait`) for
    the whole grid before it reads what the grid wrote; launches without PDL are unaffected."""
    return dict(TRIGGER=pdl(device))


def check_device(name: str, *tensors: torch.Tensor) -> None:
    """ValueError unless every tensor is on CUDA (or on the CPU under the interpreter)."""
    ok = all(t.is_cuda for t in tensors)
    if not ok and interpreting():
        ok = all(t.device.type == "cpu" for t in tensors)
    if not ok:
        raise ValueError(f"{name} runs on CUDA tensors (CPU only under TRITON_INTERPRET=1)")


def check_verify_rows(indices: torch.Tensor, parents: torch.Tensor | None, B: int,
                      T: int) -> None:
    """Verify kernels: state_indices integer [B]; parents (optional) integer [B, T] with
    contiguous rows (ValueError otherwise)."""
    if indices.shape != (B,) or indices.is_floating_point():
        raise ValueError(f"state_indices {tuple(indices.shape)} must be integer [{B}]")
    if parents is not None and (parents.shape != (B, T) or parents.stride(1) != 1
                                or parents.is_floating_point()):
        raise ValueError(f"parents {tuple(parents.shape)} must be integer [{B}, {T}] with "
                         "contiguous rows")


MAX_COUNTERS = 1024
_self_resetting: dict[tuple, torch.Tensor] = {}


def _stream_buffer(device: torch.device, n: int, what: str, width: int | None,
                   fill: int) -> torch.Tensor:
    """The first n rows of a buffer of MAX_COUNTERS rows (of `width` int32 words, or single
    words), all `fill`, one per (device, stream, width): made on first use — warm-up runs
    before graph capture, so a graph captures a buffer that exists already — and never freed
    (graphs hold its address). Launches on one stream do not overlap, so no two kernels use it
    at once; each kernel leaves it at `fill` again."""
    if not 0 < n <= MAX_COUNTERS:
        raise ValueError(f"{n} {what}: at most {MAX_COUNTERS}")
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream, width)
    if key not in _self_resetting:
        shape = (MAX_COUNTERS,) if width is None else (MAX_COUNTERS, width)
        _self_resetting[key] = torch.full(shape, fill, dtype=torch.int32, device=device)
    return _self_resetting[key][:n]


def arrival_counters(device: torch.device, n: int) -> torch.Tensor:
    """n zeroed int32 counters for a kernel whose last-arriving program finishes the work and
    sets its counter back to 0 (kernels/moe_route_align.py); see `_stream_buffer`."""
    return _stream_buffer(device, n, "counters", None, 0)


def polled_rows(device: torch.device, n: int, width: int) -> torch.Tensor:
    """n rows of `width` int32 words, each -1 (`moe_route_warp.UNSET`), for a kernel whose
    programs write them and whose polling program reads them once none is -1 and sets them
    back to -1 (kernels/moe_router.py); see `_stream_buffer`."""
    return _stream_buffer(device, n, "rows", width, -1)
