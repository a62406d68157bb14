"""Speculative-decoding verify references: T draft tokens per sequence over the recurrent state
without touching the pool (the gated delta rule and the causal conv1d). Imports only torch.

Drafts are chains (token t follows t-1) or trees: parents [B, T], parents[b, t] in [-1, t),
-1 meaning "follows the committed state" (parents[b, 0] == -1). Step t's state is one decode
update of its parent's state with token t; it goes to intermediate_states[b, t], from which the
caller commits the accepted step. The math is the decode references' (gdn_ref, conv_ref),
applied step by step to states kept in accumulation precision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from qnext.kernels.conv_ref import causal_conv1d_update_ref
from qnext.kernels.gdn_ref import fused_recurrent_gated_delta_rule_ref
from qnext.kernels.precision import acc_dtype


def verify_parents(parents: Tensor | None, B: int, T: int, device: torch.device) -> Tensor:
    """parents [B, T] as int64, checked (ValueError); None gives the chain parents t - 1."""
    steps = torch.arange(T, device=device)
    if parents is None:
        return (steps - 1).expand(B, T)
    if parents.shape != (B, T) or parents.is_floating_point():
        raise ValueError(f"parents {tuple(parents.shape)} must be integer [{B}, {T}]")
    p = parents.to(device=device, dtype=torch.int64)
    if T and ((p[:, 0] != -1).any() or (p < -1).any() or (p >= steps).any()):
        raise ValueError("parents[b, t] must lie in [-1, t) with parents[b, 0] == -1")
    return p


def _walk(step: Callable[[int, Tensor], Tensor], out: Tensor, pool: Tensor,
          state_indices: Tensor, intermediate_states: Tensor, parents: Tensor | None,
          dtype: torch.dtype) -> Tensor:
    """Run the draft steps. `step(t, work)` applies token t to work [B, ...] in place (a pool
    whose slot b is sequence b) and returns that token's output, stored to out[:, t].
    pool [S, ...] is only read; the states are kept in `dtype`. Returns out."""
    B, T = intermediate_states.shape[:2]
    par = verify_parents(parents, B, T, pool.device)
    rows = torch.arange(B, device=pool.device)
    # history[:, 0] is the committed state, history[:, t + 1] the state after step t
    history = torch.empty((B, T + 1, *pool.shape[1:]), dtype=dtype, device=pool.device)
    history[:, 0] = pool[state_indices].to(dtype)
    for t in range(T):
        work = history[rows, par[:, t] + 1]  # advanced indexing: a copy
        out[:, t] = step(t, work)
        history[:, t + 1] = work
        intermediate_states[:, t] = work.to(intermediate_states.dtype)
    return out


def _check_rows(name: str, B: int, T: int, state_indices: Tensor, inter: Tensor) -> None:
    if state_indices.shape != (B,) or inter.shape[:2] != (B, T):
        raise ValueError(f"{name}: state_indices must be [{B}] and intermediate_states "
                         f"[{B}, {T}, ...], got {tuple(state_indices.shape)} and "
                         f"{tuple(inter.shape)}")


def gdn_verify_ref(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, *,
                   ssm_states: Tensor, state_indices: Tensor, intermediate_states: Tensor,
                   parents: Tensor | None = None, scale: float | None = None,
                   use_qk_l2norm: bool = True) -> Tensor:
    """Gated delta rule verify. q, k [B, T, Hk, dk]; v [B, T, Hv, dv]; g, beta [B, T, Hv]
    (g in log space, as from `gdn_gating_ref`); ssm_states [S, Hv, dk, dv] read at
    state_indices [B], never written; intermediate_states [B, T, Hv, dk, dv] receives step t's
    state at [:, t]; parents [B, T] or None (chain). Returns o [B, T, Hv, dv] in v.dtype, token
    t read from step t's state."""
    B, T, hv, dv = v.shape
    _check_rows("gdn_verify_ref", B, T, state_indices, intermediate_states)
    if intermediate_states.shape[2:] != (hv, k.shape[-1], dv):
        raise ValueError(f"intermediate_states {tuple(intermediate_states.shape)} must be "
                         f"[B, T, {hv}, {k.shape[-1]}, {dv}]")
    rows = torch.arange(B, device=v.device)

    def step(t: int, work: Tensor) -> Tensor:
        return fused_recurrent_gated_delta_rule_ref(
            q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], ssm_states=work,
            state_indices=rows, scale=scale, use_qk_l2norm=use_qk_l2norm)

    dtype = torch.promote_types(acc_dtype(ssm_states), acc_dtype(v))
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    return _walk(step, out, ssm_states, state_indices, intermediate_states, parents, dtype)


def conv_verify_ref(x: Tensor, weight: Tensor, *, conv_states: Tensor, state_indices: Tensor,
                    intermediate_states: Tensor, parents: Tensor | None = None,
                    activation: str | None = "silu") -> Tensor:
    """Causal conv1d verify. x [B, T, C] pre-conv inputs; weight [C, K]; conv_states
    [S, C, K-1] read at state_indices [B], never written; step t's window is its parent's K-1
    inputs (the slot's for -1) followed by x[:, t]; intermediate_states [B, T, C, K-1]
    receives the last K-1 inputs after step t; parents [B, T] or None (chain).
    Returns y [B, T, C] = act(sum(window * weight)) in x.dtype."""
    B, T, C = x.shape
    _check_rows("conv_verify_ref", B, T, state_indices, intermediate_states)
    if intermediate_states.shape[2:] != (C, weight.shape[1] - 1):
        raise ValueError(f"intermediate_states {tuple(intermediate_states.shape)} must be "
                         f"[B, T, {C}, {weight.shape[1] - 1}]")
    rows = torch.arange(B, device=x.device)

    def step(t: int, work: Tensor) -> Tensor:
        return causal_conv1d_update_ref(x[:, t], weight, conv_states=work, state_indices=rows,
                                        activation=activation)

    dtype = torch.promote_types(acc_dtype(conv_states), acc_dtype(x))
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return _walk(step, out, conv_states, state_indices, intermediate_states, parents, dtype)
