"""Tensor-parallel linear layers (vLLM names) and the sharding rules of their weights.

Each parameter carries a `weight_loader(param, tensor, **kwargs)` that takes the full checkpoint
tensor and copies this rank's slice; the loader in `runtime.weights` dispatches without knowing
layer internals. Collectives are visible in `forward` (RowParallelLinear's all-reduce).
Every projection goes through `dense`: on CUDA, an x of at most QNEXT_DENSE_GEMV rows (default
1; 0 turns it off) goes to the Triton GEMV (kernels/gemv.py), everything else to F.linear.
Why one row: on 4 x H200 (2026-11-28, docs/perf/serving.md) the GEMV beat cuBLAS 1.01-1.14x on
the model's projections at one row and lost from four rows on, and the batch-1 TP4 step went
from 2.75-2.80 to 2.67-2.69 ms.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qnext.worker.layers.backend import use_triton
from qnext.worker.layers.parallel import get_tp_info, shard_range

Loader = Callable[..., None]
DENSE_GEMV_ROWS = int(os.environ.get("QNEXT_DENSE_GEMV", "1"))


def dense(x: torch.Tensor, weight: torch.Tensor, norm: tuple | None = None,
          conv: tuple | None = None) -> torch.Tensor:
    """x @ weightᵀ (see the module docstring for which implementation). Only where
    `dense_takes_norm` / `dense_takes_conv` said so: `norm` (z, w, eps), the GDN output norm
    applied to x; `conv` (weight, states, slots, snapshots), the GDN input conv applied to the
    first columns of y — both inside the GEMV (kernels/gemv.py)."""
    fused = norm is not None or conv is not None
    if fused or (_gemv_rows(x.shape[0]) and x.dim() == 2 and use_triton(x)):
        from qnext.kernels.gemv import gemv, takes

        if fused or (takes(x) and x.stride(1) == 1):
            return gemv(x, weight, norm, conv)
    return F.linear(x, weight)


def _gemv_rows(rows: int) -> bool:
    return 0 < rows <= DENSE_GEMV_ROWS


def dense_takes_norm(x: torch.Tensor, rows: int, cols: int, group: int) -> bool:
    """Whether `dense` can apply a norm over `group`-lane groups of an x [rows, cols] like
    `x` (dtype, device): the Triton GEMV's rows, on CUDA."""
    if not (_gemv_rows(rows) and use_triton(x)):
        return False
    from qnext.kernels.gemv import takes_norm

    return takes_norm(rows, cols, group)


def dense_takes_conv(x: torch.Tensor) -> bool:
    """Whether `dense` can apply the GDN conv to its output for this x (one row, CUDA)."""
    return x.dim() == 2 and x.shape[0] == 1 and _gemv_rows(1) and x.stride(1) == 1 \
        and use_triton(x)


def set_loader(param: nn.Parameter, loader: Loader, num_loads: int = 1) -> nn.Parameter:
    """Attach a weight loader; `num_loads` is how many checkpoint tensors fill the parameter."""
    param.weight_loader = loader  # type: ignore[attr-defined]
    param.num_loads = num_loads  # type: ignore[attr-defined]
    return param


def copy_checked(param: torch.Tensor, tensor: torch.Tensor) -> None:
    if tuple(param.shape) != tuple(tensor.shape):
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)} vs checkpoint "
                         f"{tuple(tensor.shape)}")
    param.data.copy_(tensor)


def load_full(param: nn.Parameter, tensor: torch.Tensor) -> None:
    """Replicated parameter: every rank keeps the whole tensor."""
    copy_checked(param, tensor)


def load_rows(param: nn.Parameter, tensor: torch.Tensor, dim: int = 0) -> None:
    """Even contiguous split along `dim` (column-parallel weights, per-head vectors)."""
    tp = get_tp_info()
    start, end = shard_range(tensor.shape[dim], tp.rank, tp.size)
    copy_checked(param, tensor.narrow(dim, start, end - start))


def load_blocks(param: nn.Parameter, tensor: torch.Tensor, blocks: Sequence[int],
                dim: int = 0) -> None:
    """Split each of several consecutive sub-blocks evenly (e.g. conv channels [q | k | v])."""
    tp = get_tp_info()
    parts, offset = [], 0
    for size in blocks:
        start, end = shard_range(size, tp.rank, tp.size)
        parts.append(tensor.narrow(dim, offset + start, end - start))
        offset += size
    copy_checked(param, torch.cat(parts, dim=dim))


class ReplicatedLinear(nn.Module):
    """y = x W^T with the whole W on every rank."""

    def __init__(self, in_size: int, out_size: int) -> None:
        super().__init__()
        self.weight = set_loader(nn.Parameter(torch.empty(out_size, in_size)), load_full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense(x, self.weight)


class ColumnParallelLinear(nn.Module):
    """Output features split evenly across ranks; no collective."""

    def __init__(self, in_size: int, out_size: int) -> None:
        super().__init__()
        tp = get_tp_info()
        start, end = shard_range(out_size, tp.rank, tp.size)
        self.weight = set_loader(nn.Parameter(torch.empty(end - start, in_size)), load_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense(x, self.weight)


class RowParallelLinear(nn.Module):
    """Input features split across ranks; partial sums all-reduced when `reduce_results`."""

    def __init__(self, in_size: int, out_size: int, reduce_results: bool = True) -> None:
        super().__init__()
        tp = get_tp_info()
        start, end = shard_range(in_size, tp.rank, tp.size)
        self.comm = tp.comm
        self.reduce_results = reduce_results
        self.weight = set_loader(nn.Parameter(torch.empty(out_size, end - start)),
                                 lambda p, t: load_rows(p, t, dim=1))

    def forward(self, x: torch.Tensor, norm: tuple | None = None) -> torch.Tensor:
        """`norm`: see `dense` (the GDN output projection's decode step)."""
        y = dense(x, self.weight, norm)
        return self.comm.all_reduce(y) if self.reduce_results else y


def kv_head_range(num_kv_heads: int, rank: int, size: int) -> tuple[int, int]:
    """KV heads of a rank: an even split, or one replicated head when size > num_kv_heads."""
    if size <= num_kv_heads:
        return shard_range(num_kv_heads, rank, size)
    if size % num_kv_heads:
        raise ValueError(f"tp size {size} must be a multiple of num_key_value_heads "
                         f"{num_kv_heads}")
    head = rank // (size // num_kv_heads)
    return head, head + 1
