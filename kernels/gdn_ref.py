"""Gated DeltaNet reference math: gates, L2 norm, token-loop / chunked / decode recurrences.

Imports only torch. Legend: T = tokens in the flat batch, B = sequences, L = tokens of one
sequence, Hk/Hv = key/value heads, dk/dv = head dims, S = state slots, C = chunk size.
State layout is [Hv, dk, dv] (k index first). Per step, per value head:
    S <- exp(g_t) * S;  u_t = beta_t * (v_t - S^T k_t);  S <- S + k_t u_t^T;
    o_t = S^T (q_t * scale)
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


def gdn_gating_ref(A_log: Tensor, a: Tensor, b: Tensor, dt_bias: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token gates. a, b [T, Hv]; A_log, dt_bias [Hv] -> (g, beta), both float32 [T, Hv]."""
    sp = F.softplus(acc(a) + acc(dt_bias), beta=1.0, threshold=20.0)
    g = -torch.exp(acc(A_log)) * sp
    beta = torch.sigmoid(acc(b))
    return g, beta


def l2norm_ref(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x * rsqrt(sum(x^2, -1) + eps), computed and returned in float32."""
    xf = acc(x)
    return xf * torch.rsqrt((xf * xf).sum(dim=-1, keepdim=True) + eps)


def _prep_qk(
    q: Tensor, k: Tensor, num_v_heads: int, scale: float | None, use_qk_l2norm: bool
) -> tuple[Tensor, Tensor]:
    """q, k [N, Hk, dk] -> float32 [N, Hv, dk]; v head j reads key head j // (Hv // Hk).

    q comes back multiplied by scale (default dk**-0.5), after the optional L2 norm.
    """
    hk, dk = k.shape[-2], k.shape[-1]
    if num_v_heads % hk != 0:
        raise ValueError(f"Hv={num_v_heads} is not a multiple of Hk={hk}")
    qf, kf = acc(q), acc(k)
    if use_qk_l2norm:
        qf, kf = l2norm_ref(qf), l2norm_ref(kf)
    rep = num_v_heads // hk
    qf = qf.repeat_interleave(rep, dim=-2)
    kf = kf.repeat_interleave(rep, dim=-2)
    return qf * (dk**-0.5 if scale is None else scale), kf


def recurrent_gated_delta_rule_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float | None = None,
    use_qk_l2norm: bool = True,
) -> tuple[Tensor, Tensor]:
    """One sequence, token loop. q, k [L, Hk, dk]; v [L, Hv, dv]; g, beta [L, Hv].

    Returns (o [L, Hv, dv] in v.dtype, final state float32 [Hv, dk, dv]).
    """
    L, hv, dv = v.shape
    qf, kf = _prep_qk(q, k, hv, scale, use_qk_l2norm)  # [L, Hv, dk]
    vf, gf, bf = acc(v), acc(g), acc(beta)
    if initial_state is None:
        state = torch.zeros(hv, kf.shape[-1], dv, dtype=acc_dtype(v), device=v.device)
    else:
        state = acc(initial_state).clone()  # [Hv, dk, dv]
    out = torch.empty(L, hv, dv, dtype=acc_dtype(v), device=v.device)
    for t in range(L):
        state = state * torch.exp(gf[t])[:, None, None]
        pred = torch.einsum("hkv,hk->hv", state, kf[t])  # S^T k_t, [Hv, dv]
        u = bf[t][:, None] * (vf[t] - pred)  # [Hv, dv]
        state = state + kf[t][:, :, None] * u[:, None, :]
        out[t] = torch.einsum("hkv,hk->hv", state, qf[t])
    return out.to(v.dtype), state


def _chunk_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One chunk of n <= C tokens, all heads at once (WY / UT form).

    q, k [Hv, n, dk] (q pre-scaled); v [Hv, n, dv]; g, beta [Hv, n]; state [Hv, dk, dv].
    With G_t = cumsum(g)_t and D[t, i] = exp(G_t - G_i) for i <= t:
      (I + A) U = diag(beta) (V - diag(exp G) K S0),  A[t, i] = beta_t D[t, i] k_t.k_i  (i < t)
      O = diag(exp G) Q S0 + (D * Q K^T) U;   S_n = exp(G_n) S0 + (K * exp(G_n - G))^T U
    """
    n = q.shape[1]
    gcum = torch.cumsum(g, dim=-1)  # [Hv, n]
    diff = gcum[:, :, None] - gcum[:, None, :]  # [Hv, n(t), n(i)]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    decay = torch.where(causal, diff, torch.full_like(diff, float("-inf"))).exp()  # D
    strict = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)
    a_mat = torch.where(strict, beta[:, :, None] * (k @ k.transpose(-1, -2)) * decay, 0.0)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)
    lhs = eye + a_mat  # unit lower triangular [Hv, n, n]
    v_beta = beta[:, :, None] * v  # [Hv, n, dv]
    k_beta_decayed = (beta * gcum.exp())[:, :, None] * k  # [Hv, n, dk]
    u_v = torch.linalg.solve_triangular(lhs, v_beta, upper=False, unitriangular=True)
    w_k = torch.linalg.solve_triangular(lhs, k_beta_decayed, upper=False, unitriangular=True)
    u = u_v - w_k @ state  # [Hv, n, dv]
    inter = (q * gcum.exp()[:, :, None]) @ state  # read of the carried state
    intra = ((q @ k.transpose(-1, -2)) * decay) @ u
    g_last = gcum[:, -1:]  # [Hv, 1]
    k_tail = k * (g_last - gcum).exp()[:, :, None]  # decay from token i to chunk end
    new_state = state * g_last.exp()[:, :, None] + k_tail.transpose(-1, -2) @ u
    return inter + intra, new_state


def _chunked_sequence(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor, chunk_size: int,
    snapshot_at: int = 0,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One sequence, float32, head-major: q, k [Hv, L, dk]; v [Hv, L, dv]; g, beta [Hv, L].

    Chunks are [s, s + C); the last one may be partial. Returns (o [Hv, L, dv], state
    [Hv, dk, dv], the boundary state after `snapshot_at` tokens or None when no chunk ends there).
    """
    L = v.shape[1]
    outs: list[Tensor] = []
    snapshot = None
    for s in range(0, L, chunk_size):
        e = min(s + chunk_size, L)
        o_c, state = _chunk_step(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], beta[:, s:e], state)
        outs.append(o_c)
        if e == snapshot_at:
            snapshot = state
    return torch.cat(outs, dim=1), state, snapshot


def chunk_gated_delta_rule_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    cu_seqlens: Tensor,
    ssm_states: Tensor,
    state_indices: Tensor,
    has_initial_state: Tensor,
    scale: float | None = None,
    use_qk_l2norm: bool = True,
    chunk_size: int = 64,
    snapshot_slots: Tensor | None = None,
    snapshot_offsets: Tensor | None = None,
) -> Tensor:
    """Varlen prefill with the chunked algorithm. q, k [T, Hk, dk]; v [T, Hv, dv]; g, beta [T, Hv].

    cu_seqlens [B+1]; ssm_states [S, Hv, dk, dv] (updated in place at state_indices [B]);
    has_initial_state bool [B] (False -> start from zeros). Empty sequences are skipped.
    snapshot_slots [B] (-1 = none), snapshot_offsets [B]: sequence b's state after its first
    t = snapshot_offsets[b] tokens is also written to ssm_states[snapshot_slots[b]]; t must be a
    multiple of chunk_size or L (ValueError otherwise). Snapshot slots must be distinct from
    each other and from state_indices. Returns o [T, Hv, dv] in v.dtype.
    """
    # NOTE: snapshots are chunk-boundary states, never recomputed: hence the alignment rule
    targets = snapshot_targets(cu_seqlens, snapshot_slots, snapshot_offsets, align=chunk_size)
    T, hv, dv = v.shape
    qf, kf = _prep_qk(q, k, hv, scale, use_qk_l2norm)  # [T, Hv, dk]
    vf, gf, bf = acc(v), acc(g), acc(beta)
    out = torch.zeros(T, hv, dv, dtype=acc_dtype(v), device=v.device)
    for b, slot, s, e in iter_seqs(cu_seqlens, state_indices):
        state = initial_state(ssm_states, slot, bool(has_initial_state[b]), acc_dtype(v))
        seq = [x[s:e].transpose(0, 1) for x in (qf, kf, vf, gf, bf)]  # head-major
        snapshot_slot, t = targets.get(b, (None, 0))
        o_seq, state, snapshot = _chunked_sequence(*seq, state, chunk_size, t)
        out[s:e] = o_seq.transpose(0, 1)
        ssm_states[slot] = state.to(ssm_states.dtype)
        if snapshot_slot is not None:
            ssm_states[snapshot_slot] = snapshot.to(ssm_states.dtype)
    return out.to(v.dtype)


def fused_recurrent_gated_delta_rule_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    ssm_states: Tensor,
    state_indices: Tensor,
    scale: float | None = None,
    use_qk_l2norm: bool = True,
    snapshot_slots: Tensor | None = None,
) -> Tensor:
    """Decode: one token per sequence. q, k [B, Hk, dk]; v [B, Hv, dv]; g, beta [B, Hv].

    Reads and updates ssm_states[state_indices] ([B, Hv, dk, dv]) in place; returns o [B, Hv, dv]
    in v.dtype. state_indices must be distinct. snapshot_slots [B] (-1 = none): the updated state
    is also copied there (slots distinct from each other and from state_indices).
    """
    hv = v.shape[1]
    qf, kf = _prep_qk(q, k, hv, scale, use_qk_l2norm)  # [B, Hv, dk]
    state = acc(ssm_states[state_indices])  # [B, Hv, dk, dv]
    state = state * torch.exp(acc(g))[:, :, None, None]
    pred = torch.einsum("bhkv,bhk->bhv", state, kf)
    u = acc(beta)[:, :, None] * (acc(v) - pred)  # [B, Hv, dv]
    state = state + kf[:, :, :, None] * u[:, :, None, :]
    out = torch.einsum("bhkv,bhk->bhv", state, qf)
    ssm_states[state_indices] = state.to(ssm_states.dtype)
    write_decode_snapshots(ssm_states, state, snapshot_slots)
    return out.to(v.dtype)
