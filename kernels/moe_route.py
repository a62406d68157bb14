"""Triton kernels: MoE routing (softmax top-k) and the sort/align step of the fused MoE.

`moe_route`: router logits [T, E] -> softmax in float32, top k, optional renormalisation; one
program per token. With `shared`, the logits carry one more column, the gate of a shared expert
fused as expert E (layers/moe.py): every token also picks it, last, with weight sigmoid(logit).
Reference: `moe_route_ref` (kernels/moe_ref.py).

`moe_align`: groups the N = T·k assignments (flat index t·k + j) by expert, each group padded to
a multiple of `block_m` rows, so that a grouped GEMM gives each block of rows to one expert (the
classic fused-MoE layout). Within an expert the assignments keep their flat order. Ids outside
[0, E) (experts of other ranks under expert parallelism) are dropped. Assignments are cut into
chunks; each chunk is sorted by (expert, index) in registers and scattered to its expert's rows
at an offset given by the per-chunk expert counts (vector look-ups go through a small scratch
buffer in global memory). A single chunk needs one launch, more need a
counting launch first. Up to `SMALL_N` assignments (decode) one program computes the layout
from pairwise comparisons instead: what the general path pays in histograms and look-ups over
all E experts was most of its time at T = 1.
Reference semantics: `fused_moe_ref` groups `torch.nonzero(ids == e)`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.launch import check_device


@triton.jit
def route_token(logits_ptr, w_ptr, ids_ptr, t, s_t, E, K: tl.constexpr, BLOCK_E: tl.constexpr,
                BLOCK_K: tl.constexpr, RENORM: tl.constexpr, SHARED: tl.constexpr):
    """Token t's top-K (+ the shared expert) weights and ids, stored at row t. One bitonic
    top-BLOCK_K of the keys (`tl.topk`), not K arg-max reductions in turn (those only when
    BLOCK_K > BLOCK_E, tiny test models): the same keys, so the same choice, ≈ 1 µs sooner at
    512 experts and 1-4 tokens (bench_moe.py's router table, one H200, 2026-11-28). It still
    takes ≈ 1.7 of the ≈ 2.5 µs this tail costs the router kernel (docs/perf/moe.md)."""
    lanes = tl.arange(0, BLOCK_E)
    # ".cg": past L1 (the logits may come from other programs of the same launch)
    if SHARED:  # the shared expert's gate logit (column E), loaded with the others
        gate = tl.load(logits_ptr + t * s_t + E, cache_modifier=".cg").to(tl.float32)
    x = tl.load(logits_ptr + t * s_t + lanes, mask=lanes < E, other=-float("inf"),
                cache_modifier=".cg")
    x = x.to(tl.float32)
    p = tl.exp(x - tl.max(x, 0))
    p = p / tl.sum(p, 0)
    # one int64 key a lane: the probability's bits (>= 0, so they order as the floats do)
    # above the reversed lane, so that one max reduction gives the largest probability and,
    # on ties, the lowest index; lanes past E and lanes taken hold -1
    key = (p.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (BLOCK_E - 1 - lanes)
    key = tl.where(lanes < E, key, -1)
    slots = tl.arange(0, BLOCK_K)
    if BLOCK_K <= BLOCK_E:
        top = tl.topk(key, BLOCK_K)  # descending: slot j holds the j-th largest key
        w = tl.where(slots < K, (top >> 32).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
        ids = tl.where(slots < K, BLOCK_E - 1 - (top & 0xFFFFFFFF), 0)
    else:
        w = tl.zeros([BLOCK_K], tl.float32)
        ids = tl.zeros([BLOCK_K], tl.int64)
        for j in tl.static_range(K):  # repeated arg-max
            top = tl.max(key, 0)
            i = BLOCK_E - 1 - (top & 0xFFFFFFFF)
            m = (top >> 32).to(tl.int32).to(tl.float32, bitcast=True)
            w = tl.where(slots == j, m, w)
            ids = tl.where(slots == j, i, ids)
            key = tl.where(lanes == i, -1, key)
    if RENORM:
        w = w / tl.sum(w, 0)
    if SHARED:  # slot K: the shared expert E, weight sigmoid of its gate logit (column E)
        w = tl.where(slots == K, tl.sigmoid(gate), w)
        ids = tl.where(slots == K, E, ids)
    tl.store(w_ptr + t * (K + SHARED) + slots, w, mask=slots < K + SHARED)
    tl.store(ids_ptr + t * (K + SHARED) + slots, ids, mask=slots < K + SHARED)


@triton.jit
def last_to_arrive(count_ptr, n):
    """Counts this program in on the counter at count_ptr (one of n programs); true in the last
    to arrive, which sets the counter back to 0 for the next launch. CTA barrier, one
    acquire-release atomic at GPU scope, CTA barrier: every store the n programs made before
    is visible to the last one's loads after (read past L1, ".cg")."""
    tl.debug_barrier()
    last = tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu") == n - 1
    if last:
        tl.store(count_ptr, 0)
    tl.debug_barrier()
    return last


@triton.jit
def _route_kernel(logits_ptr, w_ptr, ids_ptr, s_t, E, K: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_K: tl.constexpr, RENORM: tl.constexpr, SHARED: tl.constexpr):
    route_token(logits_ptr, w_ptr, ids_ptr, tl.program_id(0).to(tl.int64), s_t, E, K,
                BLOCK_E, BLOCK_K, RENORM, SHARED)


def route_meta(top_k: int, num_experts: int, shared: bool) -> dict:
    """The compile-time arguments of `route_token` (and the launch's warps)."""
    block_e = triton.next_power_of_2(num_experts)
    return dict(K=top_k, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(top_k + shared),
                SHARED=shared, num_warps=4 if block_e >= 512 else 1)


def moe_route(router_logits: torch.Tensor, top_k: int, renormalize: bool,
              shared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E (+ 1 with `shared`)] (float dtype, contiguous experts) ->
    (topk_weights float32 [T, k'], topk_ids int64 [T, k']), k' = k (+ 1: the shared expert
    E last), like `moe_route_ref`; ties may pick a different expert."""
    weights, ids = route_outputs(router_logits, top_k, shared, "moe_route")
    T, E = router_logits.shape[0], router_logits.shape[1] - shared
    if T == 0:
        return weights, ids
    _route_kernel[(T,)](router_logits, weights, ids, router_logits.stride(0), E,
                        RENORM=renormalize, **route_meta(top_k, E, shared))
    return weights, ids


def route_outputs(router_logits: torch.Tensor, top_k: int, shared: bool,
                  name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks the logits (see `moe_route`); empty (weights, ids) for them."""
    if router_logits.dim() != 2 or router_logits.stride(1) != 1 \
            or not router_logits.dtype.is_floating_point:
        raise ValueError(f"router_logits must be a float [T, E] tensor with contiguous experts, "
                         f"got {tuple(router_logits.shape)} {router_logits.dtype}")
    T, E = router_logits.shape[0], router_logits.shape[1] - shared
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k={top_k} must be in [1, E={E}]")
    check_device(name, router_logits)
    dev = router_logits.device
    return (torch.empty(T, top_k + shared, dtype=torch.float32, device=dev),
            torch.empty(T, top_k + shared, dtype=torch.int64, device=dev))


@triton.jit
def _chunk_ids(ids_ptr, c, N, E, CHUNK: tl.constexpr):
    """Expert ids of chunk c as int32, E for dropped ids and past the end."""
    offs = c * CHUNK + tl.arange(0, CHUNK)
    # ".cg": past L1, which may hold stale lines of ids stored by other programs
    e = tl.load(ids_ptr + offs, mask=offs < N, other=-1, cache_modifier=".cg")
    return tl.where((e >= 0) & (e < E), e, E).to(tl.int32)


@triton.jit(do_not_specialize=["N"])
def _count_kernel(ids_ptr, counts_ptr, N, E, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    c = tl.program_id(0)
    e = _chunk_ids(ids_ptr, c, N, E, CHUNK)
    tl.store(counts_ptr + c * BLOCK_E + tl.arange(0, BLOCK_E),
             tl.histogram(e, BLOCK_E, mask=e < E))


@triton.jit
def _lookup(scratch, a, b, idx, BLOCK_E: tl.constexpr):
    """(a[idx], b[idx]) for vectors a, b [BLOCK_E] in registers, through this program's scratch
    row in global memory (a CTA barrier orders the writes before the reads)."""
    lanes = tl.arange(0, BLOCK_E)
    tl.store(scratch + lanes, a)
    tl.store(scratch + BLOCK_E + lanes, b)
    tl.debug_barrier()
    return tl.load(scratch + idx), tl.load(scratch + BLOCK_E + idx)


@triton.jit
def _place_chunk(ids_ptr, sorted_ptr, scratch, base, c, N, E, CHUNK: tl.constexpr,
                 BLOCK_E: tl.constexpr):
    """Writes the flat index of each assignment of chunk c to row base[e] + (its rank among the
    chunk's assignments to e), sorting the chunk by (expert, index)."""
    e = _chunk_ids(ids_ptr, c, N, E, CHUNK)
    hist = tl.histogram(e, BLOCK_E, mask=e < E)
    key = tl.sort(e * CHUNK + tl.arange(0, CHUNK))
    se, si = key // CHUNK, key % CHUNK
    ok = se < E
    row0, first = _lookup(scratch, base, tl.cumsum(hist, 0) - hist, tl.where(ok, se, 0), BLOCK_E)
    tl.store(sorted_ptr + row0 + tl.arange(0, CHUNK) - first, c * CHUNK + si, mask=ok)


@triton.jit
def _mark_blocks(sorted_ptr, expert_ptr, npad_ptr, scratch, bp, start, end, total, N,
                 NUM_BLOCKS, BM: tl.constexpr, BB: tl.constexpr, BLOCK_E: tl.constexpr):
    """Expert of row blocks bp·BB .. (bp+1)·BB - 1 (-1 past the used rows); N on padding rows."""
    used = tl.max(end, 0)
    b = bp * BB + tl.arange(0, BB)
    row0 = b * BM
    live = row0 < used
    eb = tl.sum((end[None, :] <= row0[:, None]).to(tl.int32), axis=1)
    tl.store(expert_ptr + b, tl.where(live, eb, -1), mask=b < NUM_BLOCKS)
    first, count = _lookup(scratch, start, total, tl.where(live, eb, 0), BLOCK_E)
    rows = row0[:, None] + tl.arange(0, BM)[None, :]
    pad = live[:, None] & (rows - first[:, None] >= count[:, None])
    tl.store(sorted_ptr + rows, tl.zeros([BB, BM], tl.int32) + N, mask=pad)
    if bp == 0:
        tl.store(npad_ptr, used)


@triton.jit(do_not_specialize=["N", "NUM_CHUNKS", "NUM_BLOCKS"])
def _align_kernel(ids_ptr, counts_ptr, scratch_ptr, sorted_ptr, expert_ptr, npad_ptr, N, E,
                  NUM_CHUNKS, NUM_BLOCKS, BM: tl.constexpr, CHUNK: tl.constexpr,
                  BLOCK_E: tl.constexpr, BB: tl.constexpr, SINGLE: tl.constexpr):
    pid = tl.program_id(0)
    lanes = tl.arange(0, BLOCK_E)
    scratch = scratch_ptr + pid * 2 * BLOCK_E
    before = tl.zeros([BLOCK_E], tl.int32)  # assignments to each expert in earlier chunks
    if SINGLE:
        e = _chunk_ids(ids_ptr, 0, N, E, CHUNK)
        total = tl.histogram(e, BLOCK_E, mask=e < E)
    else:
        total = tl.zeros([BLOCK_E], tl.int32)
        c = 0
        while c < NUM_CHUNKS:  # a while loop: runtime bounds of `range` break the interpreter
            row = tl.load(counts_ptr + c * BLOCK_E + lanes)
            total += row
            before += tl.where(c < pid, row, 0)
            c += 1
    padded = (total + BM - 1) // BM * BM
    end = tl.cumsum(padded, 0)
    start = end - padded
    if pid < NUM_CHUNKS:
        _place_chunk(ids_ptr, sorted_ptr, scratch, start + before, pid, N, E, CHUNK, BLOCK_E)
    else:
        _mark_blocks(sorted_ptr, expert_ptr, npad_ptr, scratch, pid - NUM_CHUNKS, start, end,
                     total, N, NUM_BLOCKS, BM, BB, BLOCK_E)


@triton.jit
def align_small(ids_ptr, sorted_ptr, expert_ptr, npad_ptr, N, E, ROWS, NUM_BLOCKS,
                BM: tl.constexpr, C: tl.constexpr, NB: tl.constexpr, RB: tl.constexpr):
    """The whole layout in one program for N <= C assignments (decode): every quantity from
    the C x C comparisons of the assignments' experts, no sort, no scratch look-ups."""
    i = tl.arange(0, C)
    e = _chunk_ids(ids_ptr, 0, N, E, C)
    valid = e < E
    same = (e[:, None] == e[None, :]) & valid[:, None] & valid[None, :]
    pos = tl.sum((same & (i[None, :] < i[:, None])).to(tl.int32), axis=1)  # rank in expert
    first = valid & (pos == 0)
    pad = (tl.sum(same.to(tl.int32), axis=1) + BM - 1) // BM * BM
    below = first[None, :] & (e[None, :] < e[:, None])
    start = tl.sum(tl.where(below, pad[None, :], 0), axis=1)  # the expert's first row
    r = 0
    while r < ROWS:  # padding everywhere first; the barrier orders it before the scatter
        rows = r + tl.arange(0, RB)
        tl.store(sorted_ptr + rows, tl.zeros([RB], tl.int32) + N, mask=rows < ROWS)
        r += RB
    tl.debug_barrier()
    tl.store(sorted_ptr + start + pos, i, mask=valid)
    row0 = tl.arange(0, NB) * BM
    owns = first[None, :] & (start[None, :] <= row0[:, None]) \
        & (row0[:, None] < start[None, :] + pad[None, :])
    eb = tl.max(tl.where(owns, e[None, :], -1), axis=1)
    tl.store(expert_ptr + tl.arange(0, NB), eb, mask=tl.arange(0, NB) < NUM_BLOCKS)
    tl.store(npad_ptr, tl.sum(tl.where(first, pad, 0), axis=0))


@triton.jit
def _align_small_kernel(ids_ptr, sorted_ptr, expert_ptr, npad_ptr, N, E, ROWS, NUM_BLOCKS,
                        BM: tl.constexpr, C: tl.constexpr, NB: tl.constexpr,
                        RB: tl.constexpr):
    align_small(ids_ptr, sorted_ptr, expert_ptr, npad_ptr, N, E, ROWS, NUM_BLOCKS, BM, C, NB,
                RB)


def small_align_meta(num_assignments: int, num_blocks: int, block_m: int) -> dict:
    """The compile-time arguments of `align_small` (and the launch's warps: its C x C
    comparisons spread over 8 warps from C = 128)."""
    c = max(16, triton.next_power_of_2(num_assignments))
    return dict(BM=block_m, C=c, NB=triton.next_power_of_2(num_blocks), RB=256,
                num_warps=8 if c >= 128 else 4)


# NOTE: up to this many assignments (decode batches up to 11 tokens with top-10 + the shared
# expert) one small program does it all; 64 covered only 5 tokens, and at batch 8 the two
# general launches took 13.8 µs a layer (4 x H200, docs/perf/serving.md)
SMALL_N = 128


def padded_rows(num_assignments: int, num_experts: int, block_m: int) -> int:
    """Upper bound of the padded row count: each non-empty expert pads fewer than block_m rows."""
    return num_assignments + min(num_assignments, num_experts) * (block_m - 1)


def align_outputs(n: int, num_experts: int, block_m: int, device) -> tuple:
    """Empty (sorted_ids, block_expert, num_padded) for n assignments (see `moe_align`)."""
    rows = padded_rows(n, num_experts, block_m)
    return (torch.empty(rows, dtype=torch.int32, device=device),
            torch.empty(triton.cdiv(rows, block_m), dtype=torch.int32, device=device),
            torch.empty(1, dtype=torch.int32, device=device))


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int,
              chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """topk_ids [T, k] (int32/int64, contiguous) -> (sorted_ids int32 [P], block_expert int32
    [cdiv(P, block_m)], num_padded int32 [1]) with P = `padded_rows(T·k, E, block_m)`.

    Rows num_padded.. of sorted_ids are unset; block_expert is -1 for blocks past num_padded.
    `chunk` (a power of 2) is the number of assignments one program sorts."""
    if topk_ids.dim() != 2 or not topk_ids.is_contiguous() \
            or topk_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_ids must be a contiguous int32/int64 [T, k] tensor, got "
                         f"{tuple(topk_ids.shape)} {topk_ids.dtype}")
    if block_m < 16 or block_m & (block_m - 1) or chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"block_m={block_m} and chunk={chunk} must be powers of 2, >= 16")
    check_device("moe_align", topk_ids)
    n, dev = topk_ids.numel(), topk_ids.device
    sorted_ids, block_expert, num_padded = align_outputs(n, num_experts, block_m, dev)
    rows, num_blocks = sorted_ids.shape[0], block_expert.shape[0]
    if n == 0:
        return sorted_ids, block_expert.fill_(-1), num_padded.zero_()
    if n <= SMALL_N:
        _align_small_kernel[(1,)](topk_ids, sorted_ids, block_expert, num_padded, n,
                                  num_experts, rows, num_blocks,
                                  **small_align_meta(n, num_blocks, block_m))
        return sorted_ids, block_expert, num_padded
    # NOTE: one chunk size for every n (not the power of 2 above n): each size was a Triton
    # compilation of its own, met first by a request after the warm-up
    num_chunks, block_e, bb = triton.cdiv(n, chunk), triton.next_power_of_2(num_experts), 32
    grid = num_chunks + triton.cdiv(num_blocks, bb)
    counts = torch.empty(num_chunks, block_e, dtype=torch.int32, device=dev)
    scratch = torch.empty(grid, 2, block_e, dtype=torch.int32, device=dev)
    if num_chunks > 1:
        _count_kernel[(num_chunks,)](topk_ids, counts, n, num_experts, CHUNK=chunk,
                                     BLOCK_E=block_e)
    _align_kernel[(grid,)](
        topk_ids, counts, scratch, sorted_ids, block_expert, num_padded, n, num_experts,
        num_chunks, num_blocks, BM=block_m, CHUNK=chunk, BLOCK_E=block_e, BB=bb,
        SINGLE=num_chunks == 1, num_warps=8 if chunk >= 512 else 4)
    return sorted_ids, block_expert, num_padded
