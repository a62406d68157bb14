"""The Gated DeltaNet input projections as one GEMM with a flat output layout.

The checkpoint's in_proj_qkvz and in_proj_ba are interleaved per key-head group: for each group
[q | k | v | z] (dk, dk, r·dv, r·dv rows) and [b | a] (r, r rows). Splitting that output costs
a copy per piece and a concatenation every step (seven small kernels a layer at decode, plus
a second GEMM for b, a). Here both tensors load into one weight whose rows are already
regrouped, for this rank's key-head groups: [q | k | v | z | b | a]. One GEMM then gives
`mixed` = [q | k | v] (what the conv reads), z, b and a as plain column slices of its output
(views, no copies). The decision is made at load time; the math is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from qnext.worker.layers.linear import copy_checked, dense, set_loader
from qnext.worker.layers.parallel import get_tp_info, shard_range


class GroupedInProj(nn.Module):
    """y = x W^T, W = this rank's rows of in_proj_qkvz and in_proj_ba regrouped flat."""

    def __init__(self, hidden_size: int, num_k_heads: int, num_v_heads: int, dk: int,
                 dv: int) -> None:
        super().__init__()
        tp = get_tp_info()
        self.groups = shard_range(num_k_heads, tp.rank, tp.size)
        self.hk = self.groups[1] - self.groups[0]
        self.r, self.dk, self.dv = num_v_heads // num_k_heads, dk, dv
        hv = self.hk * self.r
        # output columns: q, k (hk·dk each), v, z (hv·dv each), b, a (hv each)
        self.sizes = (self.hk * dk, self.hk * dk, hv * dv, hv * dv, hv, hv)
        self.ends = [sum(self.sizes[:i + 1]) for i in range(len(self.sizes))]
        self.weight = set_loader(nn.Parameter(torch.empty(sum(self.sizes), hidden_size)),
                                 self._load, num_loads=2)

    def _load(self, param: nn.Parameter, tensor: torch.Tensor, part: str) -> None:
        """`part` "qkvz" or "ba": the full checkpoint tensor, interleaved per group."""
        per_group = ((self.dk, self.dk, self.r * self.dv, self.r * self.dv) if part == "qkvz"
                     else (self.r, self.r))
        first, last = self.groups
        if tensor.dim() != 2 or tensor.shape[0] % sum(per_group) \
                or tensor.shape[0] // sum(per_group) < last:
            raise ValueError(f"in_proj_{part} {tuple(tensor.shape)} does not hold groups of "
                             f"{sum(per_group)} rows")
        grouped = tensor.view(-1, sum(per_group), tensor.shape[1])[first:last]
        pieces = [p.reshape(-1, tensor.shape[1]) for p in grouped.split(per_group, dim=1)]
        start = 0 if part == "qkvz" else self.ends[3]
        rows = torch.cat(pieces)
        copy_checked(param[start:start + rows.shape[0]], rows)

    def forward(self, x: torch.Tensor, conv: tuple | None = None) -> tuple[torch.Tensor, ...]:
        """(mixed [T, q|k|v], z [T, hv, dv], b [T, hv], a [T, hv]): views of one output.
        `conv`: mixed comes out through the conv already (`linear.dense`)."""
        y, ends = dense(x, self.weight, conv=conv), self.ends
        z = y[:, ends[2]:ends[3]].unflatten(-1, (-1, self.dv))
        return y[:, :ends[2]], z, y[:, ends[3]:ends[4]], y[:, ends[4]:]
