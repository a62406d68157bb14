"""`ExpertRows`: a MoE's output before the per-token sum, so that whoever consumes it (the
all-reduce + add + norm after a TP layer, `kernels/allreduce_norm.py`) may do that sum in its
own kernel. Pure torch here (layers import it on CPU too); the sum itself is the Triton
combine kernel of `kernels/moe.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ExpertRows:
    """rows [T·k, H] (row t·k + j: token t's slot j, already scaled by its routing weight),
    ids [T, k], and E. `combine()` gives [T, H]: each token's rows summed in slot order in
    float32, ids outside [0, E) skipped (the last step of `fused_moe`)."""

    rows: torch.Tensor
    ids: torch.Tensor
    num_experts: int

    def check(self, residual: torch.Tensor) -> None:
        """ValueError unless these rows can be summed onto `residual`: residual [T, D]
        contiguous in the rows' dtype, rows [T·k, D] and ids [T, k] contiguous (what the fused
        kernels after a MoE read)."""
        (T, K), D = self.ids.shape, residual.shape[-1]
        if residual.shape != (T, D) or not residual.is_contiguous() \
                or residual.dtype != self.rows.dtype:
            raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} must be a "
                             f"contiguous [{T}, D] in the rows' dtype {self.rows.dtype}")
        if self.rows.shape != (T * K, D) or not self.rows.is_contiguous() \
                or not self.ids.is_contiguous():
            raise ValueError(f"rows {tuple(self.rows.shape)} must be contiguous "
                             f"[T·k = {T * K}, {D}] for ids {tuple(self.ids.shape)}")

    def combine(self) -> torch.Tensor:
        from qnext.kernels.moe import combine_rows

        return combine_rows(self.rows, self.ids, self.num_experts)
