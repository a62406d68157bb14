"""Triton kernel: the causal depthwise conv1d (+ SiLU) verify for speculative decoding — T
draft tokens per sequence over the conv-state pool, which stays untouched; the K-1 inputs
after step t go to intermediate_states[b, t].

One program per (sequence, block of channels) walks the T steps: step t's window is its
parent's K-1 inputs (intermediate_states[b, parent], written earlier by the same program, or
the slot's for -1; chains: parent = t-1) followed by x_t, y_t = act(sum_j w[:, j] *
window[:, j]). The parent's inputs are re-read from memory (a few bytes, cache-hot), so the
intermediate dtype should be conv_states' (else the windows are rounded to it).

Reference: `conv_verify_ref` (kernels/verify_ref.py). State layout [S, C, K-1]; float32 math.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.launch import check_device, check_verify_rows


@triton.jit
def _load_parent(base, offs_j, mask_c, K: tl.constexpr):
    """(window columns 0..K-2, the same shifted left by one) of a [BC, K-1] state; float32."""
    old = tl.load(base + offs_j[None, :], mask=mask_c[:, None] & (offs_j[None, :] < K - 1),
                  other=0.0).to(tl.float32)
    shifted = tl.load(base + offs_j[None, :] + 1,
                      mask=mask_c[:, None] & (offs_j[None, :] + 1 < K - 1),
                      other=0.0).to(tl.float32)
    return old, shifted


@triton.jit
def _conv_verify_kernel(x_ptr, w_ptr, state_ptr, slot_ptr, inter_ptr, parent_ptr, y_ptr,
                        s_xb, s_xt, s_ss, s_sc, s_ib, s_it, s_ic, s_pb, s_yb, s_yt, C,
                        T: tl.constexpr, K: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr,
                        SILU: tl.constexpr, TREE: tl.constexpr):
    i_b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    offs_j = tl.arange(0, BK)
    mask_c = offs_c < C
    slot = tl.load(slot_ptr + i_b).to(tl.int64)
    slot_base = state_ptr + slot * s_ss + offs_c[:, None] * s_sc
    inter_base = inter_ptr + i_b * s_ib + offs_c[:, None] * s_ic
    w = tl.load(w_ptr + offs_c[:, None] * K + offs_j[None, :],
                mask=mask_c[:, None] & (offs_j[None, :] < K), other=0.0).to(tl.float32)
    keep = mask_c[:, None] & (offs_j[None, :] < K - 1)
    for t in range(T):
        p = t - 1
        if TREE:
            # clamped into [-1, t): a malformed tree reads a wrong window, never out of bounds
            p = tl.load(parent_ptr + i_b * s_pb + t).to(tl.int32)
            p = tl.maximum(tl.minimum(p, t - 1), -1)
        if p < 0:
            old, shifted = _load_parent(slot_base, offs_j, mask_c, K)
        else:
            old, shifted = _load_parent(inter_base + p * s_it, offs_j, mask_c, K)
        x = tl.load(x_ptr + i_b * s_xb + t * s_xt + offs_c, mask=mask_c,
                    other=0.0).to(tl.float32)
        # window column j < K-1 is the parent's column j; column K-1 is x_t
        window = tl.where(offs_j[None, :] == K - 1, x[:, None], old)
        y = tl.sum(window * w, axis=1)
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_ptr + i_b * s_yb + t * s_yt + offs_c, y.to(y_ptr.dtype.element_ty),
                 mask=mask_c)
        new = tl.where(offs_j[None, :] + 1 == K - 1, x[:, None], shifted)
        tl.store(inter_base + t * s_it + offs_j[None, :], new.to(inter_ptr.dtype.element_ty),
                 mask=keep)
        tl.debug_barrier()  # step t's inputs are stored before step t+1 (or a child) reads them


def conv_verify(x: torch.Tensor, weight: torch.Tensor, *, conv_states: torch.Tensor,
                state_indices: torch.Tensor, intermediate_states: torch.Tensor,
                parents: torch.Tensor | None = None, activation: str | None = "silu",
                block_c: int = 128) -> torch.Tensor:
    """Verify T draft tokens per sequence. x [B, T, C] (channels contiguous); weight [C, K]
    contiguous; conv_states [S, C, K-1] read at state_indices [B], never written;
    intermediate_states [B, T, C, K-1] (may be a strided view) receives the last K-1 inputs
    after step t at [:, t]; parents [B, T] int (None: chains), parents[b, t] in [-1, t), -1 =
    the committed state — not checked on the device (out-of-range values are clamped).
    Returns y [B, T, C] in x.dtype."""
    _check(x, weight, conv_states, state_indices, intermediate_states, parents)
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"unsupported activation {activation!r}")
    B, T, C = x.shape
    K = weight.shape[1]
    y = torch.empty((B, T, C), dtype=x.dtype, device=x.device)
    if B == 0 or T == 0:
        return y
    tree = parents is not None
    par = parents if tree else state_indices
    inter = intermediate_states
    grid = (B, triton.cdiv(C, block_c))
    _conv_verify_kernel[grid](
        x, weight, conv_states, state_indices, inter, par, y, x.stride(0), x.stride(1),
        conv_states.stride(0), conv_states.stride(1), inter.stride(0), inter.stride(1),
        inter.stride(2), par.stride(0) if tree else 0, y.stride(0), y.stride(1), C, T=T,
        K=K, BK=triton.next_power_of_2(K), BC=block_c, SILU=activation is not None, TREE=tree)
    return y


def _check(x, weight, states, indices, inter, parents) -> None:
    if x.dim() != 3 or weight.dim() != 2:
        raise ValueError(f"x {tuple(x.shape)} must be [B, T, C] and weight "
                         f"{tuple(weight.shape)} [C, K]")
    B, T, C = x.shape
    K = weight.shape[1]
    if weight.shape != (C, K) or K < 2 or not weight.is_contiguous():
        raise ValueError(f"weight {tuple(weight.shape)} must be a contiguous [{C}, K >= 2]")
    if states.dim() != 3 or states.shape[1:] != (C, K - 1) or states.stride(2) != 1 \
            or x.stride(2) != 1:
        raise ValueError(f"conv_states {tuple(states.shape)} must be [S, {C}, {K - 1}] and x, "
                         "conv_states contiguous in their last dim")
    if inter.shape != (B, T, C, K - 1) or inter.stride(3) != 1 or not inter.is_floating_point():
        raise ValueError(f"intermediate_states {tuple(inter.shape)} must be a float "
                         f"[{B}, {T}, {C}, {K - 1}] contiguous in its last dim")
    check_verify_rows(indices, parents, B, T)
    check_device("conv_verify", x, weight, states, indices, inter,
                 *(() if parents is None else (parents,)))
