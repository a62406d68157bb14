"""Triton kernel: partial NeoX (rotate-half) rotary embedding of q and k, in place.

Per block of tokens: the angles pos * inv_freq in float32 (inv_freq made once per
(rotary_dim, theta, device) by the reference's own torch ops, so the angles are bit-identical
to it), reduced modulo 2*pi in float64 so cos / sin stay accurate for positions up to 2^24,
then rounded to q's dtype like the reference's cos / sin tables. Every head of q and of k
rotates its first R dims, [x1, x2] -> [x1*c - x2*s, x2*c + x1*s]; dims R.. are not touched.

With `kv_store` the same launch also writes the rotated k and the given v into the paged
K/V cache at each token's kv_loc (what `store_kv_ref` does after the rotation): at decode that
is two index kernels fewer per attention layer. With `norms` it first applies the per-head
q / k RMSNorms of the attention layer (into new tensors, rounded to q's dtype as the norm
kernel does, then rotated): two launches fewer again.

Reference: `rope_cos_sin_ref` + `apply_rope_ref` (kernels/rope_ref.py), `store_kv_ref`.
Arithmetic in float32.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from qnext.kernels.launch import check_device
from qnext.kernels.norm import zero_centred_rms_norm

# 2*pi = _TWO_PI_HI + _TWO_PI_LO, both exact in float32 (turns * HI is exact in float64)
_TWO_PI_HI = tl.constexpr(torch.tensor(2 * math.pi, dtype=torch.float32).item())
_TWO_PI_LO = tl.constexpr(torch.tensor(2 * math.pi - _TWO_PI_HI.value,
                                       dtype=torch.float32).item())
_INV_TWO_PI = tl.constexpr(1 / (2 * math.pi))


@triton.jit
def _cos_sin(pos_ptr, inv_ptr, t, mask_t, R2, BF: tl.constexpr, ROUND: tl.constexpr):
    """cos, sin [BT, BF] of the angles pos[t] * inv_freq, rounded to the ROUND dtype."""
    offs_f = tl.arange(0, BF)
    pos = tl.load(pos_ptr + t, mask=mask_t, other=0).to(tl.float32)
    inv = tl.load(inv_ptr + offs_f, mask=offs_f < R2, other=0.0)
    angle = (pos[:, None] * inv[None, :]).to(tl.float64)  # the product rounds in float32
    turns = tl.floor(angle * _INV_TWO_PI + 0.5)
    r = ((angle - turns * _TWO_PI_HI) - turns * _TWO_PI_LO).to(tl.float32)  # |r| <~ pi
    return (tl.cos(r).to(ROUND).to(tl.float32), tl.sin(r).to(ROUND).to(tl.float32))


@triton.jit
def _rotate(x_ptr, s_t, s_h, H, t, mask_t, c, s, R2, BH: tl.constexpr, BF: tl.constexpr):
    """x[t, h, :R] for every head h < H rotated in place; c, s [BT, BF]."""
    offs_h = tl.arange(0, BH)
    offs_f = tl.arange(0, BF)
    first = (x_ptr + t[:, None, None] * s_t + offs_h[None, :, None] * s_h
             + offs_f[None, None, :])
    mask = (mask_t[:, None, None] & (offs_h < H)[None, :, None]
            & (offs_f < R2)[None, None, :])
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + R2, mask=mask, other=0.0).to(tl.float32)
    c3, s3 = c[:, None, :], s[:, None, :]
    tl.store(first, (x1 * c3 - x2 * s3).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(first + R2, (x2 * c3 + x1 * s3).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_rows(x_ptr, s_t, s_h, cache_ptr, locs, H, D, t, mask_t, BH: tl.constexpr,
                BD: tl.constexpr):
    """cache[locs[t], h, :] = x[t, h, :] for every head h < H (cache rows [H, D] contiguous)."""
    offs_h = tl.arange(0, BH)
    offs_d = tl.arange(0, BD)
    mask = mask_t[:, None, None] & (offs_h < H)[None, :, None] & (offs_d < D)[None, None, :]
    x = tl.load(x_ptr + t[:, None, None] * s_t + offs_h[None, :, None] * s_h
                + offs_d[None, None, :], mask=mask, other=0.0)
    at = locs[:, None, None] * (H * D) + offs_h[None, :, None] * D + offs_d[None, None, :]
    tl.store(cache_ptr + at, x.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _norm_heads(x_ptr, s_t, s_h, y_ptr, w_ptr, eps, H, D, t0, T, BT: tl.constexpr,
                BH: tl.constexpr, BD: tl.constexpr):
    """y[t, h] (contiguous [T, H, D]) = zero-centred RMSNorm over D of x[t, h], for the
    block's tokens t0 .. t0 + BT - 1 (as `add_rms_norm` computes it)."""
    r = tl.arange(0, BT * BH)
    t, h = t0 + r // BH, r % BH
    cols = tl.arange(0, BD)
    mask = ((t < T) & (h < H))[:, None] & (cols < D)[None, :]
    x = tl.load(x_ptr + (t * s_t + h * s_h)[:, None] + cols[None, :], mask=mask, other=0.0)
    y = zero_centred_rms_norm(x.to(tl.float32), w_ptr, cols, D, eps)
    tl.store(y_ptr + (t * H + h)[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, pos_ptr, inv_ptr, v_ptr, kc_ptr, vc_ptr, locs_ptr, qs_ptr,
                 ks_ptr, qw_ptr, kw_ptr, eps, T, HQ, HK, R2, D, s_qt, s_qh, s_kt, s_kh,
                 s_vt, s_vh, s_qst, s_qsh, s_kst, s_ksh, BT: tl.constexpr, BHQ: tl.constexpr,
                 BHK: tl.constexpr, BF: tl.constexpr, BD: tl.constexpr, STORE: tl.constexpr,
                 NORM: tl.constexpr):
    t = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    mask_t = t < T
    if NORM:  # q, k: the outputs, first the normalised sources (qs, ks), then rotated
        t0 = tl.program_id(0).to(tl.int64) * BT
        _norm_heads(qs_ptr, s_qst, s_qsh, q_ptr, qw_ptr, eps, HQ, D, t0, T, BT, BHQ, BD)
        _norm_heads(ks_ptr, s_kst, s_ksh, k_ptr, kw_ptr, eps, HK, D, t0, T, BT, BHK, BD)
        tl.debug_barrier()  # the rotation reads the normalised rows back, by other threads
    c, s = _cos_sin(pos_ptr, inv_ptr, t, mask_t, R2, BF, q_ptr.dtype.element_ty)
    _rotate(q_ptr, s_qt, s_qh, HQ, t, mask_t, c, s, R2, BHQ, BF)
    _rotate(k_ptr, s_kt, s_kh, HK, t, mask_t, c, s, R2, BHK, BF)
    if STORE:
        tl.debug_barrier()  # the rotated k is read back whole, by other threads
        locs = tl.load(locs_ptr + t, mask=mask_t, other=0)
        _store_rows(k_ptr, s_kt, s_kh, kc_ptr, locs, HK, D, t, mask_t, BHK, BD)
        _store_rows(v_ptr, s_vt, s_vh, vc_ptr, locs, HK, D, t, mask_t, BHK, BD)


@functools.lru_cache(maxsize=16)
def _inv_freq(rotary_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """[R/2] float32 inverse frequencies, by the same ops as `rope_cos_sin_ref`."""
    exponents = torch.arange(0, rotary_dim, 2, device=device, dtype=torch.float32) / rotary_dim
    return 1.0 / theta**exponents


def apply_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, *, rotary_dim: int,
               theta: float, block_t: int | None = None, kv_store: tuple | None = None,
               norms: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] IN PLACE and return them.

    q, k float, any token / head strides (q may be the [q | gate] view of the projection),
    last dim contiguous; positions [T] integer (exact up to 2^24); rotary_dim even, <= D.
    Matches `apply_rope_ref(x, *rope_cos_sin_ref(positions, rotary_dim, theta, q.dtype))`
    for both: cos / sin are rounded to q's dtype. The first call per (rotary_dim, theta,
    device) builds a cached inv_freq tensor (make it before any CUDA-graph capture).
    kv_store (k_cache, v_cache, kv_locs, v): also write the rotated k and v [T, Hkv, D] (last
    dim contiguous) into k_cache, v_cache [N, Hkv, D] (contiguous) at kv_locs int64 [T].
    norms (q_weight [D], k_weight [D], eps): first the per-head zero-centred RMSNorm of q and
    k (`add_rms_norm` without a residual); q and k are then left as they are and the results
    are new contiguous tensors — the q / k norms of the attention layer in the same launch.
    """
    _check(q, k, positions, rotary_dim)
    T, HQ, D = q.shape
    HK = k.shape[1]
    if kv_store is not None:
        _check_store(k, *kv_store)
    sources = (q, k)
    if norms is not None:
        _check_norms(q, *norms)
        q, k = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty_like(k)
    if T == 0:
        return q, k
    BHQ, BHK, BD = triton.next_power_of_2(HQ), triton.next_power_of_2(HK), \
        triton.next_power_of_2(D)
    BF = triton.next_power_of_2(rotary_dim // 2)
    width = BD if norms is not None else BF  # the widest per-head tile of the launch
    bt = block_t or max(1, min(16, 2048 // (BHQ * width)))
    inv = _inv_freq(rotary_dim, float(theta), q.device)
    k_cache, v_cache, locs, v = kv_store if kv_store is not None else (k, k, positions, k)
    q_w, k_w, eps = norms if norms is not None else (q, k, 0.0)
    _rope_kernel[(triton.cdiv(T, bt),)](
        q, k, positions, inv, v, k_cache, v_cache, locs, *sources, q_w, k_w, eps, T, HQ, HK,
        rotary_dim // 2, D, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
        v.stride(1), sources[0].stride(0), sources[0].stride(1), sources[1].stride(0),
        sources[1].stride(1), BT=bt, BHQ=BHQ, BHK=BHK, BF=BF, BD=BD,
        STORE=kv_store is not None, NORM=norms is not None)
    return q, k


def _check_norms(q: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 eps: float) -> None:
    D = q.shape[2]
    if q_weight.shape != (D,) or k_weight.shape != (D,):
        raise ValueError(f"norm weights {tuple(q_weight.shape)}, {tuple(k_weight.shape)} must "
                         f"be [{D}]")
    check_device("apply_rope", q_weight, k_weight)


def _check_store(k: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 kv_locs: torch.Tensor, v: torch.Tensor) -> None:
    if v.shape != k.shape or v.stride(2) != 1:
        raise ValueError(f"v {tuple(v.shape)} must match k {tuple(k.shape)}, last dim "
                         "contiguous")
    if k_cache.shape[1:] != k.shape[1:] or v_cache.shape != k_cache.shape \
            or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError(f"k_cache / v_cache {tuple(k_cache.shape)} must be contiguous "
                         f"[N, {k.shape[1]}, {k.shape[2]}]")
    if kv_locs.shape != (k.shape[0],) or kv_locs.dtype != torch.int64:
        raise ValueError(f"kv_locs must be int64 [{k.shape[0]}]")
    check_device("apply_rope", k_cache, v_cache, kv_locs, v)


def _check(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, rotary_dim: int) -> None:
    """ValueError unless the shapes, dtypes, strides and device fit `apply_rope`."""
    if q.dim() != 3 or k.dim() != 3 or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} must be [T, H, D] with the "
                         "same T and D")
    if q.stride(2) != 1 or k.stride(2) != 1:
        raise ValueError("q and k must be contiguous in their last dim")
    if not (q.is_floating_point() and k.is_floating_point()):
        raise ValueError("q and k must be float tensors")
    if positions.shape != (q.shape[0],) or positions.is_floating_point():
        raise ValueError(f"positions {tuple(positions.shape)} must be an integer [{q.shape[0]}]")
    if rotary_dim % 2 or not 2 <= rotary_dim <= q.shape[2]:
        raise ValueError(f"rotary_dim {rotary_dim} must be even, 2 <= rotary_dim <= "
                         f"{q.shape[2]}")
    check_device("apply_rope", q, k, positions)
