"""Triton kernels: MoE routing, the top k of the router's softmax.

`moe_route`: router logits [T, E] -> the top k of the softmax in float32 (chosen on the logits,
which order alike), optional renormalisation; one program per token (`route_token`, which
moe_route_align.py's one-launch path calls too; moe_route_warp.py routes the router kernel's
tokens on the same keys, `logit_keys`, `key_logit`, `key_floor`, and the same tail, `chosen`
and `store_routing`). With `shared`, the logits carry one more column, the gate of a shared
expert fused as expert E (layers/moe.py): every token also picks it, last, with weight
sigmoid(logit). `last_to_arrive`: the arrival counter moe_route_align.py orders its last
program by.
Reference: `moe_route_ref` (kernels/moe_ref.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.launch import check_device


@triton.jit
def _ordered(bits, SIGN_MASK: tl.constexpr):
    """Float bits (signed ints) <-> ints ordered as the floats: the negatives' magnitude bits
    flipped (its own inverse)."""
    return bits ^ ((bits >> (bits.dtype.primitive_bitwidth - 1)) & SIGN_MASK)


@triton.jit
def logit_keys(x, lanes, E, BLOCK_E: tl.constexpr, BF16: tl.constexpr):
    """One key a lane: the logit's ordered bits above the reversed lane, so that the largest
    key is the largest logit and, on ties, the lowest index; lanes past E hold the minimum.
    BF16 (logits exact in bfloat16): int32 keys, the logit's 16 bits above 16 lane bits;
    else int64 keys, its 32 bits above 32."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)  # -0.0 ties with 0.0
    if BF16:
        key = (_ordered(bits >> 16, 0x7FFF) << 16) | (BLOCK_E - 1 - lanes)
    else:
        key = (_ordered(bits, 0x7FFFFFFF).to(tl.int64) << 32) | (BLOCK_E - 1 - lanes)
    return tl.where(lanes < E, key, key_floor(BF16))


@triton.jit
def key_floor(BF16: tl.constexpr):
    """The smallest key (lanes past E, lanes taken)."""
    if BF16:
        floor = -2147483648
    else:
        floor = -9223372036854775808
    return floor


@triton.jit
def key_logit(key, BF16: tl.constexpr):
    """The logit and the lane back from `logit_keys`' keys."""
    if BF16:
        bits, lane = _ordered(key >> 16, 0x7FFF) << 16, key & 0xFFFF
    else:
        bits, lane = _ordered((key >> 32).to(tl.int32), 0x7FFFFFFF), key & 0xFFFFFFFF
    return bits.to(tl.float32, bitcast=True), lane


@triton.jit
def route_token(logits_ptr, w_ptr, ids_ptr, t, s_t, E, K: tl.constexpr, BLOCK_E: tl.constexpr,
                BLOCK_K: tl.constexpr, RENORM: tl.constexpr, SHARED: tl.constexpr,
                BF16: tl.constexpr):
    """Token t's top-K (+ the shared expert) weights and ids, stored at row t. The top K of the
    logits are those of the softmax: one bitonic top-BLOCK_K of the logit keys (`tl.topk`;
    K arg-max reductions in turn only when BLOCK_K > BLOCK_E, tiny test models), then the
    softmax of the K chosen (RENORM) or over all E. Keys on logits, not probabilities: no
    softmax over E before the sort, and with bf16 logits half-width keys (docs/perf/moe.md)."""
    lanes = tl.arange(0, BLOCK_E)
    gate = 0.0
    # ".cg": past L1 (the logits may come from other programs of the same launch)
    if SHARED:  # the shared expert's gate logit (column E), loaded with the others
        gate = tl.load(logits_ptr + t * s_t + E, cache_modifier=".cg").to(tl.float32)
    x = tl.load(logits_ptr + t * s_t + lanes, mask=lanes < E, other=-float("inf"),
                cache_modifier=".cg")
    x = x.to(tl.float32)
    key = logit_keys(x, lanes, E, BLOCK_E, BF16)
    slots = tl.arange(0, BLOCK_K)
    if BLOCK_K <= BLOCK_E:
        top = tl.topk(key, BLOCK_K)  # descending: slot j holds the j-th largest key
    else:
        top = tl.zeros([BLOCK_K], key.dtype)
        for j in tl.static_range(K):  # repeated arg-max
            best = tl.max(key, 0)
            top = tl.where(slots == j, best, top)
            key = tl.where(key == best, key_floor(BF16), key)
    ids, m, w = chosen(top, BLOCK_E, K, BLOCK_K, BF16)
    if RENORM:
        w = w / tl.sum(w, 0)
    else:
        w = w / tl.sum(tl.where(lanes < E, tl.exp(x - m), 0.0), 0)
    store_routing(w_ptr, ids_ptr, t, w, ids, gate, E, K, BLOCK_K, SHARED)


@triton.jit
def chosen(top, BLOCK_E: tl.constexpr, K: tl.constexpr, BLOCK_K: tl.constexpr,
           BF16: tl.constexpr):
    """From the top keys (descending in slots 0 ... K - 1, `logit_keys` over BLOCK_E lanes):
    (the experts' ids, the largest logit m, exp(logit - m)) a slot, 0 past K."""
    slots = tl.arange(0, BLOCK_K)
    logit, lane = key_logit(top, BF16)
    ids = tl.where(slots < K, BLOCK_E - 1 - lane.to(tl.int64), 0)
    m = tl.max(tl.where(slots < K, logit, -float("inf")), 0)
    return ids, m, tl.where(slots < K, tl.exp(logit - m), 0.0)


@triton.jit
def store_routing(w_ptr, ids_ptr, t, w, ids, gate, E, K: tl.constexpr, BLOCK_K: tl.constexpr,
                  SHARED: tl.constexpr):
    """Token t's row of weights and ids; with SHARED, slot K the shared expert E with weight
    sigmoid of its gate logit."""
    slots = tl.arange(0, BLOCK_K)
    if SHARED:
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
                  BLOCK_K: tl.constexpr, RENORM: tl.constexpr, SHARED: tl.constexpr,
                  BF16: tl.constexpr):
    route_token(logits_ptr, w_ptr, ids_ptr, tl.program_id(0).to(tl.int64), s_t, E, K,
                BLOCK_E, BLOCK_K, RENORM, SHARED, BF16)


def route_meta(top_k: int, num_experts: int, shared: bool, logit_dtype: torch.dtype) -> dict:
    """The compile-time arguments of `route_token` (and the launch's warps); `logit_dtype`:
    the dtype the logits are exact in — bfloat16 ones take half-width sort keys."""
    block_e = triton.next_power_of_2(num_experts)
    return dict(K=top_k, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(top_k + shared),
                SHARED=shared, BF16=logit_dtype == torch.bfloat16 and block_e <= 1 << 16,
                num_warps=4 if block_e >= 512 else 1)


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
                        RENORM=renormalize,
                        **route_meta(top_k, E, shared, router_logits.dtype))
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
    return route_buffers(T, top_k, shared, router_logits.device)


def route_buffers(T: int, top_k: int, shared: bool,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty routing outputs: (weights float32 [T, k'], ids int64 [T, k']), k' = top_k
    (+ 1 with `shared`)."""
    return (torch.empty(T, top_k + shared, dtype=torch.float32, device=device),
            torch.empty(T, top_k + shared, dtype=torch.int64, device=device))
