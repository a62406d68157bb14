"""Triton: one token's MoE routing, polled from a logits row that other programs of the launch
write, and chosen by every warp alone (kernels/moe_router.py's routing program).

The logits are held as NC = 2^LOG_NC >= E / 32 columns of 32 lanes (column i, lane l: expert
32·i + l), a tuple of [32] tensors: with 4 warps a [32] tensor is one copy a warp, so each warp
holds every logit and its reductions are warp-synchronous (`redux.sync` for the int32 keys of
bf16 logits), with no shared memory or barrier between warps. The top K: each lane sorts its
NC order-preserving keys (`moe_route.logit_keys`) in registers (a bitonic network), then K
rounds of a warp maximum over the lanes' heads, the winning lane's list shifted up. On an H200
that is 0.48-0.57 µs for the top 10 of 512 where the block-wide bitonic `tl.topk` of
`moe_route.route_token` takes 1.07-1.22 µs (docs/perf/moe.md, 2026-11-29).

The row: int32 words, each a float32 logit's bits, `UNSET` (-1, a NaN no logit carries)
until written; the routing program reads it volatile (past the caches) until no word is
`UNSET` — one decision for the block a round, by a block-wide reduction of the warps' flags
(a warp deciding alone could set the row back while another still polls, and each deciding
alone was 1.5 µs slower) — keeps what it read, and sets the row back to `UNSET` for the next
launch (`launch.polled_rows` keeps the rows between launches).
Reference: `moe_route_ref` of the logits (kernels/moe_ref.py).
"""

from __future__ import annotations

import triton
import triton.language as tl

from qnext.kernels.moe_route import chosen, key_floor, logit_keys, store_routing

UNSET = tl.constexpr(-1)
LANES = 32  # a column: one warp's lanes


def log_columns(num_experts: int) -> int:
    """LOG_NC for E routed experts: log2 of the power-of-2 number of 32-lane columns."""
    return (triton.next_power_of_2(triton.cdiv(num_experts, LANES))).bit_length() - 1


@triton.jit
def _read_row(row, lanes, E, NC: tl.constexpr, SHARED: tl.constexpr):
    """One volatile read of the row: (NC columns of bits, 0 past E; every lane's read of the
    gate's bits, column E, or 0 without SHARED)."""
    cols = ()
    for i in tl.static_range(NC):
        e = i * 32 + lanes
        cols = cols + (tl.load(row + e, mask=e < E, other=0, volatile=True),)
    gate = tl.zeros_like(lanes)
    if SHARED:
        gate = tl.load(row + E + lanes * 0, volatile=True)
    return cols, gate


@triton.jit
def _unset(cols, gate, E, NC: tl.constexpr):
    """Whether any warp read a word still `UNSET`: the warp's flag, then one block-wide
    reduction (each thread contributes its warp's flag), so that every warp decides alike."""
    any_unset = gate == UNSET
    for i in tl.static_range(NC):
        any_unset = any_unset | (cols[i] == UNSET)
    flag = tl.max(any_unset.to(tl.int32), 0)
    spread = tl.arange(0, 128)  # 4 warps' lanes; `< E + 128` (always true) keeps the reduction
    return tl.max(tl.where(spread < E + 128, flag, 0), 0) != 0  # from being folded away


@triton.jit
def poll_row(bits_ptr, t, s_t, E, NC: tl.constexpr, SHARED: tl.constexpr):
    """Row t of bits_ptr once every word is written, then set back to `UNSET`: (NC float32
    columns, -inf past E; the gate logit, 0 without SHARED)."""
    lanes = tl.arange(0, 32)
    row = bits_ptr + t * s_t
    cols, gate = _read_row(row, lanes, E, NC, SHARED)
    while _unset(cols, gate, E, NC):
        cols, gate = _read_row(row, lanes, E, NC, SHARED)
    xs = ()
    for i in tl.static_range(NC):
        e = i * 32 + lanes
        tl.store(row + e, tl.full([32], UNSET, tl.int32), mask=e < E)
        xs = xs + (tl.where(e < E, cols[i].to(tl.float32, bitcast=True), -float("inf")),)
    if SHARED:
        tl.store(row + E, UNSET)
    return xs, tl.max(gate, 0).to(tl.float32, bitcast=True)


@triton.jit
def _sorted_lanes(keys, LOG_NC: tl.constexpr):
    """Each lane's 2**LOG_NC keys in descending order (a bitonic network in registers)."""
    for s in tl.static_range(1, LOG_NC + 1):
        for t in tl.static_range(s):
            out = ()
            for i in tl.static_range(1 << LOG_NC):
                if ((i >> (s - 1 - t)) & 1) == ((i >> s) & 1):
                    out = out + (tl.maximum(keys[i], keys[i ^ (1 << (s - 1 - t))]),)
                else:
                    out = out + (tl.minimum(keys[i], keys[i ^ (1 << (s - 1 - t))]),)
            keys = out
    return keys


@triton.jit
def _top_keys(xs, E, LOG_NC: tl.constexpr, K: tl.constexpr, BLOCK_K: tl.constexpr,
              BF16: tl.constexpr):
    """The K largest keys of the columns' logits, descending, in slots 0 ... K - 1 of a
    [BLOCK_K] tensor (the floor key past K): each lane's keys sorted, then K rounds of a warp
    maximum over the lanes' heads, the winning lane's list shifted up."""
    NC: tl.constexpr = 1 << LOG_NC
    lanes = tl.arange(0, 32)
    keys = ()
    for i in tl.static_range(NC):
        keys = keys + (logit_keys(xs[i], i * 32 + lanes, E, NC * 32, BF16),)
    keys = _sorted_lanes(keys, LOG_NC)
    slots = tl.arange(0, BLOCK_K)
    top = tl.full([BLOCK_K], key_floor(BF16), keys[0].dtype)
    for j in tl.static_range(K):
        best = tl.max(keys[0], 0)
        top = tl.where(slots == j, best, top)
        won = keys[0] == best
        shifted = ()
        for i in tl.static_range(NC - 1):
            shifted = shifted + (tl.where(won, keys[i + 1], keys[i]),)
        keys = shifted + (tl.where(won, key_floor(BF16), keys[NC - 1]),)
    return top


@triton.jit
def route_columns(xs, gate, w_ptr, ids_ptr, t, E, LOG_NC: tl.constexpr, K: tl.constexpr,
                  BLOCK_K: tl.constexpr, RENORM: tl.constexpr, SHARED: tl.constexpr,
                  BF16: tl.constexpr):
    """Token t's top-K (+ the shared expert E, weight sigmoid(gate)) weights and ids, stored
    at row t, from its logits columns (`poll_row`): the softmax of the K chosen (RENORM) or
    over all E, as `moe_route.route_token`."""
    NC: tl.constexpr = 1 << LOG_NC
    ids, m, w = chosen(_top_keys(xs, E, LOG_NC, K, BLOCK_K, BF16), NC * 32, K, BLOCK_K, BF16)
    if RENORM:
        w = w / tl.sum(w, 0)
    else:
        total = tl.exp(xs[0] - m)
        for i in tl.static_range(1, NC):
            total += tl.exp(xs[i] - m)
        w = w / tl.sum(total, 0)
    store_routing(w_ptr, ids_ptr, t, w, ids, gate, E, K, BLOCK_K, SHARED)
