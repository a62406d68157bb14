"""Triton kernel: the causal depthwise conv1d (+ SiLU) of a varlen prefill batch over the
conv-state pool by slot, with the final state (and an optional snapshot) written in place.

A flat grid over (blocks of BT tokens, blocks of channels); no host-side preparation: each
program finds the sequence of its first row by a search over cu_seqlens. A block inside one
sequence, K-1 or more tokens past its start (most blocks of a long prompt), takes a short path:
the K shifted row loads and nothing else (on an H200 the general path alone reached 11-20 % of
the copy floor at 8K-64K tokens, docs/perf/conv-prefill.md); from SPLIT_FROM_TOKENS tokens
those blocks run in a launch of their own, compiled apart (fewer registers, see `_PARTS`).
Token t at position p of its sequence reads the window inputs p-K+1 .. p; those before the
sequence start come from the initial state (its slot, or zeros). In-place hazard: the old state
of a sequence is read only by its first K-1 tokens, so those are all computed by the program
holding the sequence's FIRST token (in a small tile of their own, which may reach past its
block), and that program alone writes the sequence's final state and snapshot, after a
barrier. The other blocks take the general path (`_conv_block_walk`): one vector read of the
sequence starts after the block's first sequence gives every row its sequence, and only those
head tiles read states. It replaced five dependent binary searches with state taps over the
whole tile (255 registers and spills on sm_90, now 128 and none): 1.01-1.87x faster on an H200,
1.87x at 512 sequences of 128 tokens (docs/perf/conv-prefill.md).

Reference: `causal_conv1d_varlen_ref` (kernels/conv_ref.py). State layout [S, C, K-1].
Arithmetic in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.chunk_map import count_le, count_le_wide, walk_starts
from qnext.kernels.launch import check_device
from qnext.kernels.varlen import snapshot_pointers, snapshot_targets


@triton.jit
def _conv_rows(t, owned, b, start, offs_c, mask_c, x_ptr, s_xt, w_ptr, state_ptr, s_ss, s_sc,
               slot_ptr, init_ptr, y_ptr, C, K: tl.constexpr, SILU: tl.constexpr):
    """y[t] for the rows t marked `owned` (t [R] int64 rows, b / start their sequence)."""
    p = t - start
    slot = tl.load(slot_ptr + b, mask=owned, other=0).to(tl.int64)
    from_state = owned & (tl.load(init_ptr + b, mask=owned, other=0) != 0)
    mask = owned[:, None] & mask_c[None, :]
    acc = tl.zeros((t.shape[0], offs_c.shape[0]), dtype=tl.float32)
    for j in tl.static_range(K):
        # tap j reads input position p + j - (K-1): a row of x, or state column p + j
        in_x = p + j >= K - 1
        xv = tl.load(x_ptr + (t + j - (K - 1))[:, None] * s_xt + offs_c[None, :],
                     mask=mask & in_x[:, None], other=0.0).to(tl.float32)
        sv = tl.load(state_ptr + slot[:, None] * s_ss + offs_c[None, :] * s_sc
                     + (p + j)[:, None], mask=mask & (from_state & ~in_x)[:, None],
                     other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs_c * K + j, mask=mask_c, other=0.0).to(tl.float32)
        acc += w[None, :] * (xv + sv)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + t[:, None] * C + offs_c[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _window(pos, start, limit, slot, from_state, live, offs_c, mask_c, x_ptr, s_xt, state_ptr,
            s_ss, s_sc, K: tl.constexpr):
    """[BC, BW] window columns at sequence positions pos [BW] (negative: old state column)."""
    in_x = (pos >= 0) & (start + pos < limit)
    ok = live & mask_c[:, None] & (tl.arange(0, pos.shape[0]) < K - 1)[None, :]
    xv = tl.load(x_ptr + (start + pos)[None, :] * s_xt + offs_c[:, None],
                 mask=ok & in_x[None, :], other=0.0).to(tl.float32)
    sv = tl.load(state_ptr + slot * s_ss + offs_c[:, None] * s_sc + (K - 1 + pos)[None, :],
                 mask=ok & from_state & (pos < 0)[None, :] & (pos >= 1 - K)[None, :],
                 other=0.0).to(tl.float32)
    return xv + sv


@triton.jit
def _write_states(b, cu_ptr, limit, offs_c, mask_c, x_ptr, s_xt, state_ptr, s_ss, s_sc,
                  slot_ptr, init_ptr, snap_ptr, snap_off_ptr, K: tl.constexpr,
                  BW: tl.constexpr, HAS_SNAP: tl.constexpr):
    """Sequence b's final state (its last K-1 window columns) and snapshot, in place."""
    start = tl.load(cu_ptr + b).to(tl.int64)
    length = tl.load(cu_ptr + b + 1).to(tl.int64) - start
    slot = tl.load(slot_ptr + b).to(tl.int64)
    from_state = tl.load(init_ptr + b) != 0
    offs_w = tl.arange(0, BW)
    keep = mask_c[:, None] & (offs_w < K - 1)[None, :]
    new = _window(length - (K - 1) + offs_w, start, limit, slot, from_state, length > 0,
                  offs_c, mask_c, x_ptr, s_xt, state_ptr, s_ss, s_sc, K)
    if HAS_SNAP:
        snap = tl.load(snap_ptr + b).to(tl.int64)
        taken = (length > 0) & (snap >= 0)
        at = tl.load(snap_off_ptr + b).to(tl.int64)
        old = _window(at - (K - 1) + offs_w, start, limit, slot, from_state, taken, offs_c,
                      mask_c, x_ptr, s_xt, state_ptr, s_ss, s_sc, K)
    tl.debug_barrier()  # every read of the old state precedes the writes
    cols = offs_c[:, None] * s_sc + offs_w[None, :]
    tl.store(state_ptr + slot * s_ss + cols, new.to(state_ptr.dtype.element_ty),
             mask=keep & (length > 0))
    if HAS_SNAP:
        tl.store(state_ptr + snap * s_ss + cols, old.to(state_ptr.dtype.element_ty),
                 mask=keep & taken)


@triton.jit(do_not_specialize=["T", "B", "n_iter"])  # one compile per PART, any batch
def _conv_prefill_kernel(x_ptr, w_ptr, state_ptr, cu_ptr, slot_ptr, init_ptr, snap_ptr,
                         snap_off_ptr, y_ptr, s_xt, s_ss, s_sc, T, C, B, n_iter,
                         K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BW: tl.constexpr,
                         SILU: tl.constexpr, HAS_SNAP: tl.constexpr, PART: tl.constexpr,
                         BN: tl.constexpr):
    """PART: which blocks this launch computes (`_PARTS`). BN: cu_seqlens entries a step of
    the general path's walk (`_conv_block_walk`) and of its own search for b0."""
    t0 = tl.program_id(0).to(tl.int64) * BT
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    mask_c = offs_c < C
    limit = tl.minimum(tl.load(cu_ptr + B).to(tl.int64), T)
    if PART == 2:  # no interior block computes here: a search of its own
        b0 = tl.minimum(count_le_wide(cu_ptr + 1, B, t0, BN), B - 1)
    else:
        b0 = tl.minimum(count_le(cu_ptr + 1, B, t0, n_iter), B - 1)
    start0 = tl.load(cu_ptr + b0).to(tl.int64)
    end0 = tl.minimum(tl.load(cu_ptr + b0 + 1).to(tl.int64), limit)
    interior = (t0 - start0 >= K - 1) & (t0 + BT <= end0)
    if PART != 2:
        if interior:
            _conv_body(t0 + tl.arange(0, BT), tl.full((BT,), 1, tl.int1), offs_c, mask_c,
                       x_ptr, s_xt, w_ptr, y_ptr, C, K, SILU)
    if PART != 1:
        if interior == 0:
            _conv_block_walk(t0, b0, start0, offs_c, mask_c, limit, x_ptr, w_ptr, state_ptr,
                             cu_ptr, slot_ptr, init_ptr, snap_ptr, snap_off_ptr, y_ptr, s_xt,
                             s_ss, s_sc, C, B, K, BT, BW, BN, SILU, HAS_SNAP)


@triton.jit
def _conv_body(t, rows, offs_c, mask_c, x_ptr, s_xt, w_ptr, y_ptr, C, K: tl.constexpr,
               SILU: tl.constexpr):
    """Rows t [BT] marked `rows`, each K-1 or more tokens into its sequence: no state to read
    or write (`_conv_rows`' state taps add 0.0 there). All rows of an interior block (no
    sequence starts in it) pass a constant mask, which the compiler folds away (same PTX as a
    maskless copy of this loop, checked on sm_90)."""
    acc = tl.zeros((t.shape[0], offs_c.shape[0]), dtype=tl.float32)
    mask = rows[:, None] & mask_c[None, :]
    for j in tl.static_range(K):
        xv = tl.load(x_ptr + (t + j - (K - 1))[:, None] * s_xt + offs_c[None, :], mask=mask,
                     other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs_c * K + j, mask=mask_c, other=0.0).to(tl.float32)
        acc += w[None, :] * xv
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + t[:, None] * C + offs_c[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _conv_block_walk(t0, b0, start0, offs_c, mask_c, limit, x_ptr, w_ptr, state_ptr, cu_ptr,
                     slot_ptr, init_ptr, snap_ptr, snap_off_ptr, y_ptr, s_xt, s_ss, s_sc, C, B,
                     K: tl.constexpr, BT: tl.constexpr, BW: tl.constexpr, BN: tl.constexpr,
                     SILU: tl.constexpr, HAS_SNAP: tl.constexpr):
    """Any block that is not interior: per-row sequences (`walk_starts`), then the rows that
    read no state (`_conv_body`), then for each sequence starting here its first K-1 rows in
    a [BW, BC] tile with the state taps (`_conv_rows`) and its final state. Empty
    sequences starting at t0 before b0 are skipped (their writes were masked off). The
    barrier in `_write_states` orders a head's reads of its old state before the writes."""
    t = t0 + tl.arange(0, BT)
    start, last = walk_starts(t, t0, b0, start0, cu_ptr, B, BT, BN)
    _conv_body(t, (t < limit) & (t - start >= K - 1), offs_c, mask_c, x_ptr, s_xt, w_ptr,
               y_ptr, C, K, SILU)
    seq = b0 + (start0 < t0)  # b0 starts in this block only at t0
    r = tl.arange(0, BW)
    while seq < last:  # the sequences starting in this block: their heads, their states
        head = tl.load(cu_ptr + seq).to(tl.int64) + r
        end = tl.minimum(tl.load(cu_ptr + seq + 1).to(tl.int64), limit)
        _conv_rows(head, (r < K - 1) & (head < end), seq + r * 0, head - r, offs_c, mask_c,
                   x_ptr, s_xt, w_ptr, state_ptr, s_ss, s_sc, slot_ptr, init_ptr, y_ptr, C,
                   K, SILU)
        _write_states(seq, cu_ptr, limit, offs_c, mask_c, x_ptr, s_xt, state_ptr, s_ss, s_sc,
                      slot_ptr, init_ptr, snap_ptr, snap_off_ptr, K, BW, HAS_SNAP)
        seq += 1


def conv_prefill(x: torch.Tensor, weight: torch.Tensor, *, cu_seqlens: torch.Tensor,
                 conv_states: torch.Tensor, state_indices: torch.Tensor,
                 has_initial_state: torch.Tensor, snapshot_slots: torch.Tensor | None = None,
                 snapshot_offsets: torch.Tensor | None = None, activation: str | None = "silu",
                 check_snapshots: bool = True, out: torch.Tensor | None = None,
                 block_t: int = 32, block_c: int = 128, num_warps: int = 4) -> torch.Tensor:
    """Varlen prefill conv, the contract of `causal_conv1d_varlen_ref`.

    x [T, C] float (rows may be strided, channels contiguous); weight [C, K] contiguous,
    2 <= K <= 8; cu_seqlens [B+1] int (cu_seqlens[-1] == T; rows past it are not written);
    conv_states [S, C, K-1] (last dim contiguous), read at the distinct state_indices [B]
    where has_initial_state [B] (bool) else zeros, and overwritten there with the final
    states; empty sequences leave their slot untouched. snapshot_slots [B] (-1: none) and
    snapshot_offsets [B]: the state after the first t tokens (1 <= t <= L) also goes to
    that slot (distinct from every state slot). `check_snapshots` validates the offsets with
    `snapshot_targets` — a host sync; pass False where the caller guarantees them.
    Returns y [T, C] in x.dtype (written into `out` when given, contiguous). block_t, block_c,
    num_warps: the tile of one program (scripts/bench_conv_prefill.py sweeps them).
    """
    _check(x, weight, cu_seqlens, conv_states, state_indices, has_initial_state,
           snapshot_slots, snapshot_offsets, activation)
    _check_blocks(block_t, block_c)
    if check_snapshots:
        snapshot_targets(cu_seqlens, snapshot_slots, snapshot_offsets)
    T, C = x.shape
    K, B = weight.shape[1], cu_seqlens.shape[0] - 1
    y = _output(x, out)
    if T == 0 or B == 0:
        return y
    has_snap = snapshot_slots is not None
    snaps, offsets = snapshot_pointers(snapshot_slots, snapshot_offsets, state_indices)
    init = has_initial_state.view(torch.uint8) if has_initial_state.dtype == torch.bool \
        else has_initial_state
    grid = (triton.cdiv(T, block_t), triton.cdiv(C, block_c))
    for part in _PARTS[T >= SPLIT_FROM_TOKENS]:
        _conv_prefill_kernel[grid](
            x, weight, conv_states, cu_seqlens, state_indices, init, snaps, offsets, y,
            x.stride(0), conv_states.stride(0), conv_states.stride(1), T, C, B, B.bit_length(),
            K=K, BT=block_t, BC=block_c,
            BW=triton.next_power_of_2(K - 1), SILU=activation is not None, HAS_SNAP=has_snap,
            PART=part, BN=WALK_STEP, num_warps=num_warps)
    return y


# The kernel's PART: 0 every block, 1 the interior blocks only, 2 the others only. Compiled
# apart, the interior path gets registers of its own: the one kernel holding both paths
# took 255 registers and spilled (scripts/compile_sm90.py, sm_90), which caps the programs
# an SM holds, while interior blocks need few. From SPLIT_FROM_TOKENS tokens a prefill takes
# two launches (1, then 2); below, one (its blocks are mostly not interior anyway).
_PARTS = {False: (0,), True: (1, 2)}
SPLIT_FROM_TOKENS = 1024
# The kernel's BN: cu_seqlens entries a step of `walk_starts` and `count_le_wide`; one step
# unless 32 sequences start in a block.
WALK_STEP = 32


def _check(x, weight, cu_seqlens, conv_states, state_indices, has_initial_state,
           snapshot_slots, snapshot_offsets, activation) -> None:
    """ValueError unless the shapes, dtypes, strides and device fit `conv_prefill`."""
    if x.dim() != 2 or x.stride(1) != 1 or not x.is_floating_point():
        raise ValueError(f"x {tuple(x.shape)} must be a float [T, C] with contiguous channels")
    C, K = x.shape[1], weight.shape[-1]
    if weight.shape != (C, K) or not weight.is_contiguous() or not 2 <= K <= 8:
        raise ValueError(f"weight {tuple(weight.shape)} must be a contiguous [{C}, K], "
                         "2 <= K <= 8")
    if conv_states.dim() != 3 or conv_states.shape[1:] != (C, K - 1) \
            or conv_states.stride(2) != 1:
        raise ValueError(f"conv_states {tuple(conv_states.shape)} must be [S, {C}, {K - 1}] "
                         "with a contiguous last dim")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1 or cu_seqlens.is_floating_point():
        raise ValueError("cu_seqlens must be an integer [B+1]")
    B = cu_seqlens.shape[0] - 1
    per_seq = [state_indices, has_initial_state]
    if (snapshot_slots is None) != (snapshot_offsets is None):
        raise ValueError("snapshot_slots and snapshot_offsets go together")
    if snapshot_slots is not None:
        per_seq += [snapshot_slots, snapshot_offsets]
    if any(t.shape != (B,) or (t.is_floating_point()) for t in per_seq):
        raise ValueError(f"state_indices, has_initial_state (and snapshots) must be [{B}] "
                         "integer / bool")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"unsupported activation {activation!r}")
    check_device("conv_prefill", x, weight, cu_seqlens, conv_states, *per_seq)


def _output(x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """`out` checked to be a contiguous [T, C] of x's dtype and device, or a new one."""
    if out is None:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {tuple(x.shape)} {x.dtype}")
    check_device("conv_prefill", x, out)
    return out


def _check_blocks(block_t: int, block_c: int) -> None:
    """Powers of two; block_t >= 8 > K-2, so a sequence's first K-1 tokens reach at most
    one block past its start (the spill tile)."""
    if block_t < 8 or block_t & (block_t - 1) or block_c < 1 or block_c & (block_c - 1):
        raise ValueError(f"block_t {block_t} (>= 8) and block_c {block_c} must be powers of 2")
