"""Norms of Qwen3-Next: zero-centred RMSNorm (scale 1 + w, optional fused residual add) and the
gated RMSNorm of the Gated DeltaNet output (plain w, times silu(z)). Triton kernels on CUDA
(`kernels/norm.py`), the torch references elsewhere (`layers/backend.py`)."""

from __future__ import annotations

import torch
from torch import nn

from qnext.kernels import gated_rms_norm_ref, rms_norm_ref
from qnext.kernels.expert_rows import ExpertRows
from qnext.worker.layers.backend import use_triton
from qnext.worker.layers.linear import load_full, set_loader
from qnext.worker.layers.parallel import get_tp_info


class RMSNorm(nn.Module):
    """y = x / rms(x) * (1 + w); with `residual`, normalises x + residual and returns the sum.
    With `reduce`, x is a partial sum over the TP ranks (or a MoE's uncombined `ExpertRows`):
    it is all-reduced (combined) first, in the same kernel as the add and the norm where there
    is one."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = set_loader(nn.Parameter(torch.empty(size)), load_full)
        self.comm = get_tp_info().comm

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                reduce: bool = False):
        if reduce:
            fused = self._fused(x, residual) if residual is not None else None
            if fused is not None:
                return fused
            if isinstance(x, ExpertRows):  # a MoE's rows, not yet summed per token
                x = x.combine()
            x = self.comm.all_reduce(x)
        if use_triton(x):
            from qnext.kernels.norm import add_rms_norm

            if residual is None:  # a view of [T, H, D] heads is read in place
                rows = x.dim() == 3 and x.stride(-1) == 1
                return add_rms_norm(x if rows else x.contiguous(), self.weight, self.eps)
            return add_rms_norm(x.contiguous(), self.weight, self.eps,
                                residual.to(x.dtype).contiguous())
        return rms_norm_ref(x, self.weight, self.eps, residual)

    def _fused(self, x, residual: torch.Tensor):
        """(y, h) from one kernel that also reduces x over the ranks (and sums a MoE's rows),
        or None: one rank's MoE rows take the combine + add + norm kernel."""
        if self.comm.size == 1 and isinstance(x, ExpertRows):
            from qnext.kernels.combine_norm import combine_add_rms_norm

            return combine_add_rms_norm(x, residual.to(x.rows.dtype).contiguous(),
                                        self.weight, self.eps)
        return self.comm.all_reduce_add_rms_norm(x, residual, self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """Per value head: y = x / rms(x) * w * silu(z); the weight is shared by all heads."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = set_loader(nn.Parameter(torch.empty(size)), load_full)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if use_triton(x):
            from qnext.kernels.norm import gated_rms_norm

            return gated_rms_norm(x.contiguous(), z.to(x.dtype), self.weight, self.eps)
        return gated_rms_norm_ref(x, z, self.weight, self.eps)
