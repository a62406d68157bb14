"""Triton: a MoE's combine fused with the residual add and zero-centred RMSNorm after it, for
one rank (no tensor parallelism: nothing to all-reduce). The TP counterpart is
`kernels/allreduce_norm.py`.

A decoder layer's MoE ends with the per-token sum of its k weighted expert rows; the next step
is `h = sum + residual; y = rms_norm(h)`. One program per token row does both: the sum in slot
order (float32, rounded to the rows' dtype as the combine kernel stores it), the add in float32
rounded once, then the norm. One launch instead of two; the combined row never goes to memory.

Reference: `ExpertRows.combine()` then `rms_norm_ref` with the residual.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.expert_rows import ExpertRows
from qnext.kernels.launch import check_device
from qnext.kernels.moe import combined_row
from qnext.kernels.norm import add_norm_row


@triton.jit
def _combine_norm_kernel(rows_ptr, ids_ptr, r_ptr, w_ptr, y_ptr, s_ptr, D, E, eps,
                         K: tl.constexpr, BD: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BD)
    cm = cols < D
    acc = combined_row(rows_ptr, ids_ptr, t, cols, cm, D, E, K, BD)
    add_norm_row(acc, r_ptr, s_ptr, y_ptr, w_ptr, t * D + cols, cols, cm, D, eps)


def combine_add_rms_norm(rows: ExpertRows, residual: torch.Tensor, weight: torch.Tensor,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, h): h = rows.combine() + residual, y = zero-centred RMSNorm of h. residual [T, D]
    contiguous, the rows' dtype; weight [D]; rows.rows [T·k, D] contiguous."""
    rows.check(residual)
    y_rows, ids = rows.rows, rows.ids
    (T, K), D = ids.shape, residual.shape[-1]
    if weight.shape != (D,):
        raise ValueError(f"weight {tuple(weight.shape)} must be [{D}]")
    check_device("combine_add_rms_norm", y_rows, ids, residual, weight)
    y, summed = torch.empty_like(residual), torch.empty_like(residual)
    if T:
        _combine_norm_kernel[(T,)](y_rows, ids, residual, weight, y, summed, D,
                                   rows.num_experts, eps, K=K, BD=triton.next_power_of_2(D),
                                   num_warps=4)
    return y, summed
