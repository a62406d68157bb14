"""Triton kernels: the sort/align step of the fused MoE (`moe_align`).

`moe_align`: groups the N = T·k assignments (flat index t·k + j) by expert, each group padded to
a multiple of `block_m` rows, so that a grouped GEMM gives each block of rows to one expert (the
classic fused-MoE layout). Within an expert the assignments keep their flat order. Ids outside
[0, E) (experts of other ranks under expert parallelism) are dropped. Assignments are cut into
chunks; each chunk is sorted by (expert, index) in registers and scattered to its expert's rows
at an offset given by the per-chunk expert counts (vector look-ups go through a small scratch
buffer in global memory). A single chunk needs one launch, more need a
counting launch first. Up to `SMALL_N` assignments (decode) one program computes the layout
from pairwise comparisons instead (`align_small`): what the general path pays in histograms and
look-ups over all E experts was most of its time at T = 1.
Reference semantics: `fused_moe_ref` groups `torch.nonzero(ids == e)`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.launch import check_device


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
