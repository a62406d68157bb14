"""Tensor-parallel identity and collectives: `TPInfo` is set once per process; `Communicator`
wraps torch.distributed (gloo on CPU, NCCL on GPU; small CUDA all-reduces over symmetric memory,
`symm_allreduce.py`). Lives with the layers (which issue the collectives) so that
runtime -> models -> layers stays acyclic; only here are groups created.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from qnext.worker.layers.symm_allreduce import (
    SymmAllReduce,
    create_symm_all_reduce,
    multicast_off,
)


class Communicator:
    """The collectives layers may issue. With one rank every call is the identity. `fast`: the
    symmetric-memory all-reduce for the small messages it fits (None: NCCL / gloo for all)."""

    def __init__(self, size: int, group: dist.ProcessGroup | None = None,
                 fast: SymmAllReduce | None = None) -> None:
        self.size = size
        self.group = group
        self.fast = fast

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place; returns `x`."""
        if self.size > 1:
            if self.fast is not None and self.fast.fits(x):
                return self.fast.all_reduce(x)
            dist.all_reduce(x, group=self.group)
        return x

    def all_reduce_add_rms_norm(self, x, residual: torch.Tensor, weight: torch.Tensor,
                                eps: float):
        """(rms_norm(sum + residual), sum + residual) with x (a tensor, or a MoE's
        `ExpertRows`) summed over ranks, in one kernel — or None where no fused kernel takes
        it (then: combine the rows, `all_reduce`, then the norm)."""
        if self.size > 1 and self.fast is not None and self.fast.fits(residual):
            return self.fast.add_rms_norm(x, residual, weight, eps)
        return None

    @property
    def fuses_expert_rows(self) -> bool:
        """Whether the norm after a MoE sums its uncombined `ExpertRows` in its own kernel: one
        rank (layers/norm.py's combine + add + norm), or `all_reduce_add_rms_norm` over the
        barrier-free path."""
        return self.size == 1 or (self.fast is not None and self.fast.lamport is not None)

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Concatenate equal-shaped shards of all ranks along `dim`."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def all_reduce_min(self, value: int) -> int:
        """Agree on the minimum of an integer across ranks (memory plans)."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return int(t.item())


@dataclass(frozen=True)
class TPInfo:
    """This process's place in the tensor-parallel group."""

    rank: int
    size: int
    comm: Communicator

    @property
    def is_primary(self) -> bool:
        return self.rank == 0


_TP: TPInfo | None = None


def set_tp_info(rank: int, size: int, comm: Communicator | None = None) -> TPInfo:
    """Set the process's TP identity; raises if already set (call `reset_tp_info` first)."""
    global _TP
    if _TP is not None:
        raise RuntimeError("TPInfo is already set for this process")
    if not 0 <= rank < size:
        raise ValueError(f"tp rank {rank} outside [0, {size})")
    _TP = TPInfo(rank, size, comm or Communicator(size))
    return _TP


def get_tp_info() -> TPInfo:
    """The process's TP identity; single-rank by default when nothing was set."""
    global _TP
    if _TP is None:
        _TP = TPInfo(0, 1, Communicator(1))
    return _TP


def reset_tp_info() -> None:
    """Forget the identity (tests, and a worker that re-initialises)."""
    global _TP
    _TP = None


def init_distributed(rank: int, size: int, init_method: str, device: str,
                     custom_all_reduce: bool = True) -> TPInfo:
    """Join the TP process group (NCCL for CUDA devices, gloo otherwise) and set TPInfo. On
    CUDA, `custom_all_reduce` sets up the symmetric-memory path for small all-reduces
    (collective; NCCL for all when it cannot). NVLink multicast stays off."""
    if size == 1:
        return set_tp_info(0, 1)
    fast = None
    if device.startswith("cuda"):
        local = torch.device(device) if ":" in device else torch.device(
            "cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(local)
        multicast_off()
        dist.init_process_group("nccl", init_method=init_method, rank=rank, world_size=size,
                                device_id=local)
        if custom_all_reduce:
            fast = create_symm_all_reduce(dist.group.WORLD, local)
    else:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=size)
    return set_tp_info(rank, size, Communicator(size, dist.group.WORLD, fast))


def _collective_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_range(total: int, rank: int, size: int) -> tuple[int, int]:
    """[start, end) of an even split of `total`; raises when `total` is not divisible."""
    if total % size:
        raise ValueError(f"{total} is not divisible by tp size {size}")
    step = total // size
    return rank * step, (rank + 1) * step
