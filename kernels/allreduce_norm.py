"""Triton: the barrier-free all-reduce (`kernels/allreduce.py`) fused with the residual add and
the zero-centred RMSNorm that follow it in every decoder layer.

A tensor-parallel layer ends in a row-parallel GEMM whose output is a partial sum; the next
step is `h = sum + residual; y = rms_norm(h)`. Here one launch does all of it: each program
takes whole rows (grid-stride over rows), pushes them into the peers' buffers, then waits for
those rows' lanes of every rank, sums them in rank order in float32, rounds to the message
dtype (the all-reduce's own result), adds the residual, stores h and the normalised row. One launch
instead of an all-reduce and a norm kernel, and the summed message never goes to memory.

It shares a buffer and its call state with the plain all-reduce (same grid, same slot
rotation): the two kinds of call may interleave in any order, as long as every rank makes the
same calls in the same order.

Reference: `all_reduce_add_rms_norm_ref` (the all-reduce reference, then `rms_norm_ref` with
the residual).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

from qnext.kernels.allreduce import (
    BLOCK,
    GRID,
    all_reduce_ref,
    arrived,
    begin_call,
    check_call,
    end_call,
    own_buffer,
    push_lanes,
    push_values,
)
from qnext.kernels.expert_rows import ExpertRows
from qnext.kernels.launch import check_device, trigger_meta
from qnext.kernels.moe import combined_row
from qnext.kernels.norm import add_norm_row
from qnext.kernels.norm_ref import rms_norm_ref


@triton.jit(do_not_specialize=["n", "rows"])
def _reduce_norm_kernel(x_ptr, ids_ptr, r_ptr, w_ptr, y_ptr, s_ptr, peers_ptr, state_ptr, rows,
                        D, n, E, cap, max_spin, eps, RANK: tl.constexpr, WORLD: tl.constexpr,
                        BLOCK: tl.constexpr, BD: tl.constexpr, K: tl.constexpr,
                        COMBINE: tl.constexpr, TRIGGER: tl.constexpr):
    if TRIGGER:  # the MoE router after it loads its weights meanwhile (`launch.trigger_meta`)
        gdc_launch_dependents()
    st, calls, slot = begin_call(state_ptr)
    cols = tl.arange(0, BD)
    cm = cols < D
    row = tl.program_id(0)
    while row < rows:  # push the rows this program reads (see `push`)
        if COMBINE:  # the row is the sum of the token's K expert rows (ExpertRows.combine)
            v = combined_row(x_ptr, ids_ptr, row.to(tl.int64), cols, cm, D, E, K, BD)
            push_values(v.to(x_ptr.dtype.element_ty), peers_ptr, slot, row * D + cols, cm,
                        cap, RANK, WORLD)
        else:
            push_lanes(x_ptr, peers_ptr, slot, row * D + cols, cm, cap, RANK, WORLD)
        row += tl.num_programs(0)
    mine = own_buffer(x_ptr, peers_ptr, RANK)
    spins = 0
    row = tl.program_id(0)
    while row < rows:
        offs = row * D + cols
        acc, spins = arrived(mine, slot, offs, cm, cap, spins, max_spin, WORLD, BD)
        # the sum rounded as the all-reduce returns it, + residual in float32 (as torch adds)
        add_norm_row(acc, r_ptr, s_ptr, y_ptr, w_ptr, offs, cols, cm, D, eps)
        row += tl.num_programs(0)
    end_call(st, mine, slot, calls, n, cap, spins, max_spin, WORLD, BLOCK)


def lamport_all_reduce_add_rms_norm(x, residual: torch.Tensor, weight: torch.Tensor,
                                    eps: float, peers: torch.Tensor, state: torch.Tensor,
                                    rank: int, world: int, cap: int, max_spin: int = 1 << 26):
    """x: this rank's partial sum [T, D] (contiguous bf16 / fp16, at most `cap` elements), or
    the `ExpertRows` whose combine is that partial sum (summed here, as it is pushed);
    residual [T, D] contiguous, the message dtype; weight [D]. Returns (y, h): h = the sum
    over ranks + residual, y = zero-centred RMSNorm of h — like
    `all_reduce_add_rms_norm_ref`. peers, state, cap: as for `lamport_all_reduce` (the same
    buffer and state may serve both)."""
    name = "lamport_all_reduce_add_rms_norm"
    expert_rows = x if isinstance(x, ExpertRows) else None
    if expert_rows is not None:
        expert_rows.check(residual)
        x = residual  # the message's shape, dtype and device, for the common checks below
    check_call(name, x, x, peers, state, rank, world, cap)
    check_device(name, x, residual, weight)
    if x.dim() != 2 or residual.shape != x.shape or residual.dtype != x.dtype \
            or not residual.is_contiguous():
        raise ValueError(f"x {tuple(x.shape)} must be [T, D] and residual "
                         f"{tuple(residual.shape)} {residual.dtype} contiguous, like x")
    rows, D = x.shape
    if weight.shape != (D,):
        raise ValueError(f"weight {tuple(weight.shape)} must be [{D}]")
    y, summed = torch.empty_like(x), torch.empty_like(x)
    rows_in, ids, E, K = (x, x, 0, 1) if expert_rows is None else (
        expert_rows.rows, expert_rows.ids, expert_rows.num_experts, expert_rows.ids.shape[1])
    if x.numel():
        _reduce_norm_kernel[(GRID,)](rows_in, ids, residual, weight, y, summed, peers, state,
                                     rows, D, x.numel(), E, cap, max_spin, eps, RANK=rank,
                                     WORLD=world, BLOCK=BLOCK, BD=triton.next_power_of_2(D),
                                     K=K, COMBINE=expert_rows is not None, num_warps=4,
                                     **trigger_meta(x.device))
    return y, summed


def all_reduce_add_rms_norm_ref(parts: list[torch.Tensor], residual: torch.Tensor,
                                weight: torch.Tensor, eps: float):
    """(y, h) with h = all_reduce_ref(parts) + residual and y = rms_norm_ref(h)."""
    return rms_norm_ref(all_reduce_ref(parts), weight, eps, residual)
