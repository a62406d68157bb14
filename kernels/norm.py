"""Triton kernels: the two RMSNorms of Qwen3-Next, a block of rows per program.

- `add_rms_norm`: residual add + zero-centred RMSNorm, y = s * rsqrt(mean(s^2) + eps) * (1 + w)
  with s = x + residual (returned too, for the next layer's residual).
- `gated_rms_norm`: the GDN output norm, y = (w * (x * rsqrt(mean(x^2) + eps))) * silu(z).

References: `rms_norm_ref` and `gated_rms_norm_ref` (kernels/norm_ref.py), whose rounding
points (sum in the input dtype; normalised value rounded to the input dtype before the
gate) these follow. Arithmetic in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

from qnext.kernels.launch import check_device, trigger_meta


@triton.jit
def _add_rms_norm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, s_ptr, R, D, XH, s_xt, s_xh, eps,
                         HAS_RESIDUAL: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
                         TRIGGER: tl.constexpr):
    if TRIGGER:  # the MoE router after it loads its weights meanwhile (`launch.trigger_meta`)
        gdc_launch_dependents()
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    cols = tl.arange(0, BD)
    mask = (rows[:, None] < R) & (cols[None, :] < D)
    at = rows[:, None] * D + cols[None, :]
    x_at = ((rows // XH) * s_xt + (rows % XH) * s_xh)[:, None] + cols[None, :]
    x = tl.load(x_ptr + x_at, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # added in float32 and rounded once, as torch adds (and as the interpreter can)
        r = tl.load(r_ptr + at, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(s_ptr + at, x, mask=mask)
    y = zero_centred_rms_norm(x.to(tl.float32), w_ptr, cols, D, eps)
    tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def add_norm_row(acc, r_ptr, s_ptr, y_ptr, w_ptr, offs, cols, cm, D, eps):
    """One row [BD] of a fused add + norm: acc (float32) rounded to the residual's dtype, as
    the unfused producer would store it; h = that + residual in float32, rounded once, stored
    at s_ptr; y = zero-centred RMSNorm of h, stored at y_ptr (offs: the row's offsets)."""
    dtype = r_ptr.dtype.element_ty
    hf = acc.to(dtype).to(tl.float32) + tl.load(r_ptr + offs, mask=cm, other=0.0).to(tl.float32)
    h = hf.to(dtype)
    tl.store(s_ptr + offs, h, mask=cm)
    y = zero_centred_rms_norm(tl.where(cm, h.to(tl.float32), 0.0)[None, :], w_ptr, cols, D, eps)
    tl.store(y_ptr + offs[None, :], y.to(y_ptr.dtype.element_ty), mask=cm[None, :])


@triton.jit
def zero_centred_rms_norm(xf, w_ptr, cols, D, eps):
    """float32 rows [BR, BD] (lanes past D hold 0) -> xf / rms(xf) * (1 + w)."""
    scale = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) / D + eps)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    return xf * scale[:, None] * (1.0 + w[None, :])


@triton.jit
def _gated_rms_norm_kernel(x_ptr, z_ptr, w_ptr, y_ptr, R, D, ZH, s_zt, s_zh, eps,
                           BR: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    cols = tl.arange(0, BD)
    mask = (rows[:, None] < R) & (cols[None, :] < D)
    at = rows[:, None] * D + cols[None, :]
    z_at = ((rows // ZH) * s_zt + (rows % ZH) * s_zh)[:, None] + cols[None, :]
    x = tl.load(x_ptr + at, mask=mask, other=0.0)
    z = tl.load(z_ptr + z_at, mask=mask, other=0.0)
    y = gated_rms_rows(x, z, w_ptr, cols, D, eps)
    tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gated_rms_rows(x, z, w_ptr, cols, D, eps):
    """Rows x, z [BR, BD] in x's storage dtype (lanes past D hold 0) -> float32
    (w * (x / rms(x))) * silu(z), rounded to x.dtype where the reference rounds."""
    xf = x.to(tl.float32)
    scale = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) / D + eps)
    return gated_scaled(x, scale[:, None], z, w_ptr, cols, D)


@triton.jit
def gated_scaled(x, scale, z, w_ptr, cols, D):
    """The gated norm once 1 / rms(x) is known: (w * (x * scale)) * silu(z) in float32, with
    `gated_rms_rows`' roundings; scale broadcasts against x, cols index x's last axis (also the
    GDN decode kernel's epilogue, which sums a head's squares over several column blocks)."""
    normed = (x.to(tl.float32) * scale).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    zf = z.to(tl.float32)
    return (w * normed).to(x.dtype).to(tl.float32) * (zf * tl.sigmoid(zf))


def _blocks(rows: int, dim: int) -> tuple[tuple[int], int, int]:
    """Grid, rows per program and padded width: about 4K elements per program."""
    bd = triton.next_power_of_2(dim)
    br = max(1, min(64, 4096 // bd))
    return (triton.cdiv(rows, br),), br, bd


def add_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None):
    """x, residual [..., D] contiguous, same shape and dtype (without a residual x may also be
    a [T, H, D] view with contiguous rows, e.g. the q heads of a [q | gate] projection);
    weight [D]. Returns y (contiguous), or (y, x + residual) with a residual — like
    `rms_norm_ref`."""
    D = x.shape[-1]
    _check_rows(x, weight, residual, rows_ok=residual is None)
    heads, s_xt, s_xh = _row_layout(x, "x")
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    summed = torch.empty_like(x) if residual is not None else x
    rows = x.numel() // D if D else 0
    if rows:
        grid, br, bd = _blocks(rows, D)
        _add_rms_norm_kernel[grid](x, residual if residual is not None else x, weight, y,
                                   summed, rows, D, heads, s_xt, s_xh, eps,
                                   HAS_RESIDUAL=residual is not None, BR=br, BD=bd,
                                   **trigger_meta(x.device))
    return (y, summed) if residual is not None else y


def _row_layout(t: torch.Tensor, name: str) -> tuple[int, int, int]:
    """(rows per token, token stride, row stride) of t: (1, D, 0) when contiguous, else t must
    be a [T, H, D] view with contiguous rows (e.g. heads sliced out of a projection)."""
    if t.is_contiguous():
        return 1, t.shape[-1], 0
    if t.dim() != 3 or t.stride(2) != 1:
        raise ValueError(f"{name} {tuple(t.shape)} with strides {t.stride()} must be contiguous "
                         "or a [T, H, D] view with contiguous rows")
    return t.shape[1], t.stride(0), t.stride(1)


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """x [..., D] contiguous; z of x's shape, contiguous or a [T, H, D] view whose heads are
    contiguous (a column slice of a projection's output); weight [D]. Returns y in x.dtype,
    like `gated_rms_norm_ref`."""
    D = x.shape[-1]
    _check_rows(x, weight, None)
    if z.shape != x.shape or z.dtype != x.dtype:
        raise ValueError(f"z {tuple(z.shape)} {z.dtype} must match x {tuple(x.shape)} {x.dtype}")
    heads, s_zt, s_zh = _row_layout(z, "z")
    y = torch.empty_like(x)
    rows = x.numel() // D if D else 0
    if rows:
        grid, br, bd = _blocks(rows, D)
        _gated_rms_norm_kernel[grid](x, z, weight, y, rows, D, heads, s_zt, s_zh, eps, BR=br,
                                     BD=bd)
    return y


def _check_rows(x: torch.Tensor, weight: torch.Tensor, other: torch.Tensor | None,
                rows_ok: bool = False) -> None:
    """`rows_ok`: x may be a view with contiguous rows (`_row_layout` checks it)."""
    check_device("the RMSNorm kernels", x, weight)
    if not x.is_contiguous() and not rows_ok:
        raise ValueError("x must be contiguous")
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"weight {tuple(weight.shape)} must be [{x.shape[-1]}]")
    if other is not None and (other.shape != x.shape or not other.is_contiguous()):
        raise ValueError(f"{tuple(other.shape)} must match x {tuple(x.shape)}, contiguous")
