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
)
from qnext.kernels.launch import check_device
from qnext.kernels.norm import zero_centred_rms_norm
from qnext.kernels.norm_ref import rms_norm_ref


@triton.jit(do_not_specialize=["n", "rows"])
def _reduce_norm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, s_ptr, peers_ptr, state_ptr, rows, D, n,
                        cap, max_spin, eps, RANK: tl.constexpr, WORLD: tl.constexpr,
                        BLOCK: tl.constexpr, BD: tl.constexpr):
    st, calls, slot = begin_call(state_ptr)
    cols = tl.arange(0, BD)
    cm = cols < D
    row = tl.program_id(0)
    while row < rows:  # push the rows this program reads (see `push`)
        push_lanes(x_ptr, peers_ptr, slot, row * D + cols, cm, cap, RANK, WORLD)
        row += tl.num_programs(0)
    mine = own_buffer(x_ptr, peers_ptr, RANK)
    spins = 0
    row = tl.program_id(0)
    while row < rows:
        offs = row * D + cols
        acc, spins = arrived(mine, slot, offs, cm, cap, spins, max_spin, WORLD, BD)
        # the sum rounded as the all-reduce returns it, + residual in float32 (as torch adds)
        hf = acc.to(x_ptr.dtype.element_ty).to(tl.float32) \
            + tl.load(r_ptr + offs, mask=cm, other=0.0).to(tl.float32)
        h = hf.to(x_ptr.dtype.element_ty)
        tl.store(s_ptr + offs, h, mask=cm)
        hf = tl.where(cm, h.to(tl.float32), 0.0)
        y = zero_centred_rms_norm(hf[None, :], w_ptr, cols, D, eps)
        tl.store(y_ptr + offs[None, :], y.to(y_ptr.dtype.element_ty), mask=cm[None, :])
        row += tl.num_programs(0)
    end_call(st, mine, slot, calls, n, cap, spins, max_spin, WORLD, BLOCK)


def lamport_all_reduce_add_rms_norm(x: torch.Tensor, residual: torch.Tensor,
                                    weight: torch.Tensor, eps: float, peers: torch.Tensor,
                                    state: torch.Tensor, rank: int, world: int, cap: int,
                                    max_spin: int = 1 << 26):
    """x: this rank's partial sum [T, D] (contiguous bf16 / fp16, at most `cap` elements);
    residual [T, D] contiguous, x's dtype; weight [D]. Returns (y, h): h = the sum over ranks
    + residual, y = zero-centred RMSNorm of h — like `all_reduce_add_rms_norm_ref`. peers,
    state, cap: as for `lamport_all_reduce` (the same buffer and state may serve both)."""
    name = "lamport_all_reduce_add_rms_norm"
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
    if x.numel():
        _reduce_norm_kernel[(GRID,)](x, residual, weight, y, summed, peers, state, rows, D,
                                     x.numel(), cap, max_spin, eps, RANK=rank, WORLD=world,
                                     BLOCK=BLOCK, BD=triton.next_power_of_2(D), num_warps=4)
    return y, summed


def all_reduce_add_rms_norm_ref(parts: list[torch.Tensor], residual: torch.Tensor,
                                weight: torch.Tensor, eps: float):
    """(y, h) with h = all_reduce_ref(parts) + residual and y = rms_norm_ref(h)."""
    return rms_norm_ref(all_reduce_ref(parts), weight, eps, residual)
