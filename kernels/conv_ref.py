"""Depthwise causal conv1d (+ SiLU) over a varlen batch and for decode; imports only torch.

Legend: T = tokens in the flat batch, B = sequences, C = conv channels, K = conv kernel,
S = state slots. The conv state of a sequence is its last K-1 PRE-conv inputs, [C, K-1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qnext.kernels.precision import acc, acc_dtype
from qnext.kernels.varlen import (
    initial_state,
    iter_seqs,
    snapshot_targets,
    write_decode_snapshots,
)


def _activate(y: Tensor, activation: str | None) -> Tensor:
    """Apply the optional activation ("silu" or None) in float32."""
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"unsupported activation {activation!r}")


def _tail(window: Tensor, width: int) -> Tensor:
    """Last `width` time columns of window [..., C, N] (empty when width == 0)."""
    return window[..., window.shape[-1] - width :]


def causal_conv1d_varlen_ref(
    x: Tensor,
    weight: Tensor,
    *,
    cu_seqlens: Tensor,
    conv_states: Tensor,
    state_indices: Tensor,
    has_initial_state: Tensor,
    activation: str | None = "silu",
    snapshot_slots: Tensor | None = None,
    snapshot_offsets: Tensor | None = None,
) -> Tensor:
    """Prefill. x [T, C] pre-conv inputs; weight [C, K]; conv_states [S, C, K-1] (updated in place).

    Per sequence: window = cat(initial state or zeros, x_seq^T) [C, K-1+L];
    y_t = sum_j weight[:, j] * window[:, t + j]. Returns y [T, C] in x.dtype.
    snapshot_slots [B] (-1 = none), snapshot_offsets [B]: the state after the first
    t = snapshot_offsets[b] tokens (1 <= t <= L), window[:, t : t+K-1], is also written to
    conv_states[snapshot_slots[b]]. Snapshot slots must be distinct from each other and from
    state_indices.
    """
    targets = snapshot_targets(cu_seqlens, snapshot_slots, snapshot_offsets)
    T, C = x.shape
    K = weight.shape[1]
    w = acc(weight)  # [C, K]
    out = torch.zeros(T, C, dtype=acc_dtype(x), device=x.device)
    for b, slot, s, e in iter_seqs(cu_seqlens, state_indices):
        init = initial_state(conv_states, slot, bool(has_initial_state[b]), acc_dtype(x))
        window = torch.cat([init, acc(x[s:e]).t()], dim=1)  # [C, K-1+L]
        taps = window.unfold(1, K, 1)  # [C, L, K]: taps[:, t, j] = window[:, t + j]
        out[s:e] = (taps * w[:, None, :]).sum(-1).t()
        conv_states[slot] = _tail(window, K - 1).to(conv_states.dtype)
        if b in targets:
            snapshot_slot, t = targets[b]
            conv_states[snapshot_slot] = window[:, t : t + K - 1].to(conv_states.dtype)
    return _activate(out, activation).to(x.dtype)


def causal_conv1d_update_ref(
    x: Tensor,
    weight: Tensor,
    *,
    conv_states: Tensor,
    state_indices: Tensor,
    activation: str | None = "silu",
    snapshot_slots: Tensor | None = None,
) -> Tensor:
    """Decode, one token per sequence. x [B, C]; weight [C, K]; conv_states [S, C, K-1].

    Shifts each used state left by one and appends x (in place); returns y [B, C] in x.dtype.
    state_indices [B] must be distinct. snapshot_slots [B] (-1 = none): the updated state is
    also copied there (slots distinct from each other and from state_indices).
    """
    K = weight.shape[1]
    state = acc(conv_states[state_indices])  # [B, C, K-1]
    window = torch.cat([state, acc(x)[:, :, None]], dim=2)  # [B, C, K]
    y = (window * acc(weight)[None]).sum(-1)  # [B, C]
    new_states = _tail(window, K - 1)  # [B, C, K-1]
    conv_states[state_indices] = new_states.to(conv_states.dtype)
    write_decode_snapshots(conv_states, new_states, snapshot_slots)
    return _activate(y, activation).to(x.dtype)
