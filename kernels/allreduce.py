"""Triton: one-shot all-reduce of 16-bit messages over peer-mapped buffers, without barriers.

Every rank owns a buffer that all ranks can address (symmetric memory over NVLink; on CPU,
shared memory between processes under Triton's interpreter): 3 slots x `world` sections x
`cap` elements. A call k uses slot k % 3. Rank r *pushes* its message into section r of that
slot in every rank's buffer, then reads the `world` sections of its own buffer and sums them in
rank order, so every rank gets the same bits.

There is no barrier: a lane's value is its own ready flag (Lamport's trick). Empty lanes hold
-0.0 (bits 0x8000 in bf16 and fp16), and a pushed -0.0 is written as +0.0 (the same number), so
a reader spins on a lane until it is not -0.0. Each call also re-empties the slot of the call
before it (its reader is done with it, and no rank writes it again before call k + 2, which
needs this rank's own call k + 1 pushes first). One launch; no copy-in; no signal pads.

Each program owns the same blocks of every message (grid-stride over a fixed grid) and keeps
its own state row: [calls made, message size of slot 0, 1, 2, spin-limit hit]. The grid must
therefore be the same for every call of a buffer, on every rank. A reader that spins past
`max_spin` gives up, leaves its sum incomplete and sets the flag (`lamport_failed`): a rank
that stopped calling must not hang the others' devices forever.

Reference: the sum over ranks in rank order, in float32 (`all_reduce_ref`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.launch import check_device

DTYPES = (torch.bfloat16, torch.float16)  # -0.0 is 0x8000 in both
EMPTY = -32768  # 0x8000 as int16
STATE_COLS = 5  # calls, sizes of slots 0..2, spin-limit hit
GRID = 32  # programs per call: at most the SMs of any target GPU, so all run at once
BLOCK = 512  # elements per block


@triton.jit
def begin_call(state_ptr):
    """(this program's state row, the calls made before, this call's slot)."""
    st = state_ptr + tl.program_id(0) * 5
    calls = tl.load(st)
    return st, calls, calls % 3


@triton.jit
def push_lanes(x_ptr, peers_ptr, slot, offs, m, cap, RANK: tl.constexpr, WORLD: tl.constexpr):
    """Writes this rank's lanes offs (mask m) into section RANK of the slot of every rank's
    buffer; a -0.0 goes out as +0.0 (-0.0 marks empty lanes)."""
    push_values(tl.load(x_ptr + offs, mask=m, other=0.0), peers_ptr, slot, offs, m, cap, RANK,
                WORLD)


@triton.jit
def push_values(v, peers_ptr, slot, offs, m, cap, RANK: tl.constexpr, WORLD: tl.constexpr):
    """`push_lanes` of values already in registers (v: the message dtype)."""
    v = tl.where(v == 0.0, 0.0, v).to(v.dtype)
    for p in tl.static_range(WORLD):
        base = tl.load(peers_ptr + p).to(tl.pointer_type(v.dtype))
        tl.store(base + (slot * WORLD + RANK) * cap + offs, v, mask=m)


@triton.jit
def push(x_ptr, peers_ptr, slot, n, cap, RANK: tl.constexpr, WORLD: tl.constexpr,
         BLOCK: tl.constexpr):
    """Pushes this program's grid-stride share of the n-element message (the blocks it will
    also read: under the interpreter, which runs programs one after another, a program must
    wait only for its peers' same program); returns this rank's own buffer."""
    lanes = tl.arange(0, BLOCK)
    start = tl.program_id(0) * BLOCK
    while start < n:
        push_lanes(x_ptr, peers_ptr, slot, start + lanes, start + lanes < n, cap, RANK, WORLD)
        start += tl.num_programs(0) * BLOCK
    return own_buffer(x_ptr, peers_ptr, RANK)


@triton.jit
def own_buffer(x_ptr, peers_ptr, RANK: tl.constexpr):
    return tl.load(peers_ptr + RANK).to(tl.pointer_type(x_ptr.dtype.element_ty))


@triton.jit
def _waiting(v, m):
    return tl.sum(((v.to(tl.int16, bitcast=True) == -32768) & m).to(tl.int32), 0)


@triton.jit
def arrived(mine, slot, offs, m, cap, spins, max_spin, WORLD: tl.constexpr,
            BLOCK: tl.constexpr):
    """(float32 sum of the slot's sections at lanes offs, in rank order; spins so far): waits
    until no masked-in lane of any section is -0.0 any more, or spins reach max_spin.
    Masked-out lanes read 1.0 from every section."""
    acc = tl.zeros([BLOCK], tl.float32)
    for q in tl.static_range(WORLD):
        ptr = mine + (slot * WORLD + q) * cap + offs
        v = tl.load(ptr, mask=m, other=1.0, volatile=True)
        waiting = _waiting(v, m)
        while (waiting > 0) & (spins < max_spin):
            v = tl.load(ptr, mask=m, other=1.0, volatile=True)
            waiting = _waiting(v, m)
            spins += 1
        acc += v.to(tl.float32)
    return acc, spins


@triton.jit
def end_call(st, mine, slot, calls, n, cap, spins, max_spin, WORLD: tl.constexpr,
             BLOCK: tl.constexpr):
    """Flags a spin-limit hit, re-empties this program's share of the previous call's slot in
    this rank's buffer (its readers are done) and records this call's size and count."""
    if spins >= max_spin:
        tl.store(st + 4, 1)
    before = (slot + 2) % 3
    n_before = tl.load(st + 1 + before)
    lanes = tl.arange(0, BLOCK)
    empty = tl.full([BLOCK], -32768, tl.int16).to(mine.dtype.element_ty, bitcast=True)
    start = tl.program_id(0) * BLOCK
    while start < n_before:
        offs = start + lanes
        for q in tl.static_range(WORLD):
            tl.store(mine + (before * WORLD + q) * cap + offs, empty, mask=offs < n_before)
        start += tl.num_programs(0) * BLOCK
    tl.store(st + 1 + slot, n.to(tl.int64))
    tl.store(st, calls + 1)


@triton.jit(do_not_specialize=["n"])  # n == 1 would become a constexpr (no `.to`)
def _lamport_kernel(x_ptr, out_ptr, peers_ptr, state_ptr, n, cap, max_spin,
                    RANK: tl.constexpr, WORLD: tl.constexpr, BLOCK: tl.constexpr):
    st, calls, slot = begin_call(state_ptr)
    mine = push(x_ptr, peers_ptr, slot, n, cap, RANK, WORLD, BLOCK)
    lanes = tl.arange(0, BLOCK)
    spins = 0
    start = tl.program_id(0) * BLOCK
    while start < n:
        offs = start + lanes
        m = offs < n
        acc, spins = arrived(mine, slot, offs, m, cap, spins, max_spin, WORLD, BLOCK)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=m)
        start += tl.num_programs(0) * BLOCK
    end_call(st, mine, slot, calls, n, cap, spins, max_spin, WORLD, BLOCK)


def lamport_buffer(world: int, cap: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A rank's buffer, all lanes empty: [3, world, cap] of `dtype` (allocate symmetric memory
    of the same shape instead and `empty_buffer` it where peers must map it)."""
    return empty_buffer(torch.empty(3, world, cap, dtype=dtype, device=device))


def empty_buffer(buffer: torch.Tensor) -> torch.Tensor:
    buffer.view(torch.int16).fill_(EMPTY)
    return buffer


def new_state(device) -> torch.Tensor:
    """The per-program state rows of one buffer (one per buffer and rank; zeros)."""
    return torch.zeros(GRID, STATE_COLS, dtype=torch.int64, device=device)


def lamport_failed(state: torch.Tensor) -> bool:
    """Whether any call of this buffer gave up waiting (reads the device)."""
    return bool(state[:, 4].any())


def lamport_all_reduce(x: torch.Tensor, out: torch.Tensor, peers: torch.Tensor,
                       state: torch.Tensor, rank: int, world: int, cap: int,
                       max_spin: int = 1 << 26) -> torch.Tensor:
    """out = the sum of every rank's x (rank order, float32 accumulation). x, out contiguous,
    same shape, bf16 / fp16, at most `cap` elements (out may be x); peers [world] int64: the
    addresses of the ranks' buffers ([3, world, cap] of x's dtype) as this process maps them;
    state from `new_state`. Every rank must make the same calls in the same order."""
    check_call("lamport_all_reduce", x, out, peers, state, rank, world, cap)
    n = x.numel()
    if n:
        _lamport_kernel[(GRID,)](x, out, peers, state, n, cap, max_spin, RANK=rank,
                                 WORLD=world, BLOCK=BLOCK, num_warps=4)
    return out


def all_reduce_ref(parts: list[torch.Tensor]) -> torch.Tensor:
    """The sum in rank order, accumulated in float32, in the parts' dtype."""
    acc = torch.zeros(parts[0].shape, dtype=torch.float32, device=parts[0].device)
    for part in parts:
        acc += part.float()
    return acc.to(parts[0].dtype)


def check_call(name: str, x, out, peers, state, rank, world, cap) -> None:
    """The checks shared by the launchers over one buffer (x: this rank's message)."""
    check_device(name, x, out, peers, state)
    if x.dtype not in DTYPES or out.dtype != x.dtype:
        raise ValueError(f"x / out must both be bf16 or fp16, got {x.dtype} / {out.dtype}")
    if out.shape != x.shape or not (x.is_contiguous() and out.is_contiguous()):
        raise ValueError(f"x {tuple(x.shape)} and out {tuple(out.shape)} must be contiguous "
                         "and of one shape")
    if x.numel() > cap:
        raise ValueError(f"{x.numel()} elements exceed the buffer's {cap} per rank")
    if peers.shape != (world,) or peers.dtype != torch.int64 or not 0 <= rank < world:
        raise ValueError(f"peers must be int64 [{world}] and 0 <= rank {rank} < {world}")
    if state.shape != (GRID, STATE_COLS) or state.dtype != torch.int64:
        raise ValueError(f"state must be int64 [{GRID}, {STATE_COLS}] (new_state)")
