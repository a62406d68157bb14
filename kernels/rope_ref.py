"""Partial NeoX (rotate-half) rotary embedding references; imports only torch.

Legend: T = tokens, H = heads, D = head dim, R = rotary_dim (<= D, even); only the first R
dims of each head are rotated, the rest pass through.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qnext.kernels.precision import acc


def rope_cos_sin_ref(
    positions: Tensor, rotary_dim: int, theta: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """positions int [T] -> (cos, sin) [T, R] in dtype; frequencies repeat across both halves."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    exponents = torch.arange(0, rotary_dim, 2, device=positions.device, dtype=work) / rotary_dim
    inv_freq = 1.0 / theta**exponents  # [R/2]
    freqs = positions.to(work)[:, None] * inv_freq[None, :]  # [T, R/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, R]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope_ref(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [T, H, D]; cos, sin [T, R]. Rotates x[..., :R] in float32; returns x.dtype."""
    rdim = cos.shape[-1]
    x_rot = acc(x[..., :rdim])
    c, s = acc(cos)[:, None, :], acc(sin)[:, None, :]  # [T, 1, R]
    rotated = x_rot * c + _rotate_half(x_rot) * s
    return torch.cat([rotated.to(x.dtype), x[..., rdim:]], dim=-1)
