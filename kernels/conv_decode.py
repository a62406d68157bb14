"""Triton kernel: the causal depthwise conv1d (+ SiLU) of one decode token per sequence, over
the conv-state pool by slot.

Per (sequence, block of channels): window = [state (K-1 pre-conv inputs) | x], y = silu(sum_j
w[:, j] * window[:, j]); the state shifts left by one in place; optionally the new state is
also written to a snapshot slot (extra_buffer prefix caching). Arithmetic in float32.

Reference: `causal_conv1d_update_ref` (kernels/conv_ref.py). State layout [S, C, K-1].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.launch import check_device


@triton.jit
def _conv_decode_kernel(x_ptr, w_ptr, state_ptr, slot_ptr, snap_ptr, y_ptr,
                        s_xb, s_ss, s_sc, C, K: tl.constexpr, BK: tl.constexpr,
                        BC: tl.constexpr, SILU: tl.constexpr, HAS_SNAP: tl.constexpr):
    i_b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    mask_c = offs_c < C
    x = tl.load(x_ptr + i_b * s_xb + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    y = conv_token(x, offs_c, mask_c, w_ptr, state_ptr, slot_ptr + i_b, snap_ptr + i_b, s_ss,
                   s_sc, K, BK, SILU, HAS_SNAP)
    tl.store(y_ptr + i_b * C + offs_c, y.to(y_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def conv_token(x, offs_c, mask_c, w_ptr, state_ptr, slot_ptr, snap_ptr, s_ss, s_sc,
               K: tl.constexpr, BK: tl.constexpr, SILU: tl.constexpr, HAS_SNAP: tl.constexpr):
    """One token's conv over channels offs_c (where mask_c): x [BC] float32 (the stored
    pre-conv input's value), the sequence's state at slot_ptr[0] shifted in place (and copied
    to snap_ptr[0] when HAS_SNAP and >= 0); returns y [BC] float32. Also the epilogue of the
    GDN input projection's GEMV (kernels/gemv.py)."""
    offs_j = tl.arange(0, BK)
    slot = tl.load(slot_ptr).to(tl.int64)
    base = state_ptr + slot * s_ss + offs_c[:, None] * s_sc
    # window column j < K-1 is state column j; column K-1 is the new input
    old = tl.load(base + offs_j[None, :], mask=mask_c[:, None] & (offs_j[None, :] < K - 1),
                  other=0.0).to(tl.float32)
    window = tl.where(offs_j[None, :] == K - 1, x[:, None], old)
    w = tl.load(w_ptr + offs_c[:, None] * K + offs_j[None, :],
                mask=mask_c[:, None] & (offs_j[None, :] < K), other=0.0).to(tl.float32)
    y = tl.sum(window * w, axis=1)
    if SILU:
        y = y * tl.sigmoid(y)
    # new state column j = window column j + 1
    new = tl.where(offs_j[None, :] + 1 == K - 1, x[:, None], 0.0)
    shifted = tl.load(base + offs_j[None, :] + 1,
                      mask=mask_c[:, None] & (offs_j[None, :] + 1 < K - 1), other=0.0)
    new = tl.where(offs_j[None, :] + 1 < K - 1, shifted.to(tl.float32), new)
    keep = mask_c[:, None] & (offs_j[None, :] < K - 1)
    tl.debug_barrier()  # every read of the old state precedes the writes
    tl.store(base + offs_j[None, :], new.to(state_ptr.dtype.element_ty), mask=keep)
    if HAS_SNAP:
        snap = tl.load(snap_ptr).to(tl.int64)
        if snap >= 0:
            tl.store(state_ptr + snap * s_ss + offs_c[:, None] * s_sc + offs_j[None, :],
                     new.to(state_ptr.dtype.element_ty), mask=keep)
    return y


def conv_decode(x: torch.Tensor, weight: torch.Tensor, *, conv_states: torch.Tensor,
                state_indices: torch.Tensor, snapshot_slots: torch.Tensor | None = None,
                activation: str | None = "silu", block_c: int = 128) -> torch.Tensor:
    """x [B, C] (rows may be strided, channels contiguous); weight [C, K] contiguous;
    conv_states [S, C, K-1] (updated in place at the distinct state_indices [B]);
    snapshot_slots [B] (-1: none) also receive the new state. Returns y [B, C] in x.dtype."""
    B, C = x.shape
    K = weight.shape[1]
    if weight.shape != (C, K) or not weight.is_contiguous():
        raise ValueError(f"weight {tuple(weight.shape)} must be a contiguous [{C}, K]")
    if conv_states.shape[1:] != (C, K - 1) or conv_states.stride(2) != 1 or x.stride(1) != 1:
        raise ValueError(f"conv_states {tuple(conv_states.shape)} must be [S, {C}, {K - 1}] "
                         "and x, conv_states contiguous in their last dim")
    if state_indices.shape != (B,) or (snapshot_slots is not None
                                       and snapshot_slots.shape != (B,)):
        raise ValueError("state_indices (and snapshot_slots) must be [B]")
    check_device("conv_decode", x, weight, conv_states, state_indices)
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"unsupported activation {activation!r}")
    y = torch.empty((B, C), dtype=x.dtype, device=x.device)
    if B == 0:
        return y
    snaps = snapshot_slots if snapshot_slots is not None else state_indices
    grid = (B, triton.cdiv(C, block_c))
    _conv_decode_kernel[grid](x, weight, conv_states, state_indices, snaps, y, x.stride(0),
                              conv_states.stride(0), conv_states.stride(1), C, K=K,
                              BK=triton.next_power_of_2(K), BC=block_c,
                              SILU=activation is not None, HAS_SNAP=snapshot_slots is not None)
    return y
