"""Triton device helpers of the gated delta rule's recurrent kernels: the gates, the q / k L2
norm and one step on a state tile. Shared by the decode (`gdn_decode.py`), verify
(`gdn_verify.py`) and chunk-preparation (`gdn_chunk_prep.py`) kernels, so every path takes the
same arithmetic. Reference: `gdn_gating_ref` + `fused_recurrent_gated_delta_rule_ref`
(kernels/gdn_ref.py); arithmetic in float32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softplus(x):
    """softplus with torch's threshold 20 (x itself above it), elementwise in float32."""
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def gates(a_ptr, b_ptr, neg_a, dt_bias):
    """Scalar decay exp(g) and beta of one (token, value head); neg_a = -exp(A_log)."""
    x = tl.load(a_ptr).to(tl.float32) + dt_bias
    return tl.exp(neg_a * softplus(x)), tl.sigmoid(tl.load(b_ptr).to(tl.float32))


@triton.jit
def l2_normalised(x, eps, L2NORM: tl.constexpr):
    """x / sqrt(sum(x²) + eps) when L2NORM, else x."""
    if L2NORM:
        x = x / tl.sqrt(tl.sum(x * x) + eps)
    return x


@triton.jit
def load_qk(ptr, offs_k, mask_k, eps, L2NORM: tl.constexpr):
    """One q or k head row in float32, L2-normalised when L2NORM."""
    x = tl.load(ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    return l2_normalised(x, eps, L2NORM)


@triton.jit
def delta_step(s, q, k, v, decay, beta):
    """One gated delta-rule step on a float32 state tile s [dk, BV] as loaded (not decayed):
    (the new tile, the output columns). o = decay·(sᵀq) + (k·q)·u equals (new tile)ᵀq, so both
    column sums read the loaded tile and the new one can be stored while o is still summed.
    The verify kernel takes the same steps (T decode steps and one verify agree to ~3e-6
    relative, no longer bit for bit: docs/perf/verify.md, 2026-11-29)."""
    kq = tl.sum(k * q)
    sk = tl.sum(s * k[:, None], axis=0)
    sq = tl.sum(s * q[:, None], axis=0)
    u = beta * (v - decay * sk)
    return s * decay + k[:, None] * u[None, :], decay * sq + kq * u
