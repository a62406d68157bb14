"""Triton: MoE routing and the sort/align step in one launch, for decode-sized batches.

At decode the routing (`moe_route`, one program per token) and the alignment (`moe_align`'s
one-program path for up to `SMALL_N` assignments) are two launches of a few microseconds
each, mostly launch latency. Here each program routes one token (softmax, top-k,
renormalisation, the fused shared expert: `route_token`) and then counts itself in on an
arrival counter; the last program to arrive lays every assignment out by expert
(`align_small`) and resets the counter for the next launch. The outputs are those of the two
launches.

Ordering: `last_to_arrive` (kernels/moe_route.py); the layout reads the ids past L1
(`_chunk_ids` loads with ".cg"). With one token there is nothing to wait for and no atomic.
The counter: `launch.arrival_counters`.

Reference: `moe_route_ref`, then `moe_align`'s layout (grouping `torch.nonzero(ids == e)`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.launch import arrival_counters
from qnext.kernels.moe_align import SMALL_N, align_outputs, align_small, small_align_meta
from qnext.kernels.moe_route import last_to_arrive, route_meta, route_outputs, route_token


@triton.jit(do_not_specialize=["T", "N"])
def _route_align_kernel(logits_ptr, w_ptr, ids_ptr, sorted_ptr, expert_ptr, npad_ptr, count_ptr,
                        T, s_t, E, N, EA, ROWS, NUM_BLOCKS, K: tl.constexpr,
                        BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, RENORM: tl.constexpr,
                        SHARED: tl.constexpr, BF16: tl.constexpr, BM: tl.constexpr,
                        C: tl.constexpr, NB: tl.constexpr, RB: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    route_token(logits_ptr, w_ptr, ids_ptr, t, s_t, E, K, BLOCK_E, BLOCK_K, RENORM, SHARED,
                BF16)
    last = T == 1
    if last:
        tl.debug_barrier()  # its own ids stored before the layout reads them
    else:
        last = last_to_arrive(count_ptr, T)
    if last:
        align_small(ids_ptr, sorted_ptr, expert_ptr, npad_ptr, N, EA, ROWS, NUM_BLOCKS, BM, C,
                    NB, RB)


def takes(num_tokens: int, top_k: int, shared: bool) -> bool:
    """Whether `moe_route_align` handles this batch (the small layout's limit)."""
    return 0 < num_tokens * (top_k + shared) <= SMALL_N


def moe_route_align(router_logits: torch.Tensor, top_k: int, renormalize: bool, shared: bool,
                    block_m: int) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """`moe_route(router_logits, top_k, renormalize, shared)` and then
    `moe_align(ids, E (+ 1 with shared), block_m)` in one launch: returns (topk_weights,
    topk_ids, (sorted_ids, block_expert, num_padded)). Needs `takes(T, top_k, shared)`."""
    weights, ids = route_outputs(router_logits, top_k, shared, "moe_route_align")
    T, E = router_logits.shape[0], router_logits.shape[1] - shared
    if not takes(T, top_k, shared):
        raise ValueError(f"{T} tokens x {top_k + shared} experts exceed the {SMALL_N} "
                         "assignments of the one-program layout (use moe_route, moe_align)")
    if block_m < 16 or block_m & (block_m - 1):
        raise ValueError(f"block_m={block_m} must be a power of 2, >= 16")
    n = ids.numel()
    aligned = align_outputs(n, E + shared, block_m, ids.device)
    rows, num_blocks = aligned[0].shape[0], aligned[1].shape[0]
    route = route_meta(top_k, E, shared, router_logits.dtype)
    align = small_align_meta(n, num_blocks, block_m)
    warps = max(route.pop("num_warps"), align.pop("num_warps"))
    count = arrival_counters(ids.device, 1)
    _route_align_kernel[(T,)](router_logits, weights, ids, *aligned, count, T,
                              router_logits.stride(0), E, n, E + shared, rows, num_blocks,
                              RENORM=renormalize, num_warps=warps, **route, **align)
    return weights, ids, aligned
