"""RMSNorm references: zero-centred (1 + w) RMSNorm with optional fused residual add, and the
gated (norm-then-SiLU-gate) RMSNorm of the GDN output. Imports only torch.

Legend: T = tokens, D = normalised (last) dim; for the gated norm rows are [T, Hv, dv], D = dv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qnext.kernels.precision import acc


def _rms_scale(xf: Tensor, eps: float) -> Tensor:
    """rsqrt(mean(x^2, -1) + eps) for float32 xf, keepdim."""
    return torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)


def rms_norm_ref(
    x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None
) -> Tensor | tuple[Tensor, Tensor]:
    """Zero-centred RMSNorm: y = x * rsqrt(mean(x^2) + eps) * (1 + w), in float32, cast to x.dtype.

    With residual: s = x + residual (in x.dtype) and the result is (rms_norm(s), s).
    """
    if residual is not None:
        summed = x + residual.to(x.dtype)
        return rms_norm_ref(summed, weight, eps), summed
    xf = acc(x)
    y = xf * _rms_scale(xf, eps) * (1.0 + acc(weight))
    return y.to(x.dtype)


def gated_rms_norm_ref(x: Tensor, z: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Gated RMSNorm (norm before gate), plain weight (not 1 + w), over the last dim.

    n = x * rsqrt(mean(x^2) + eps) in float32; y = (weight * n.to(x.dtype)) * silu(z in float32).
    Returns y in x.dtype.
    """
    xf = acc(x)
    normed = (xf * _rms_scale(xf, eps)).to(x.dtype)
    y = (weight * normed) * F.silu(acc(z))
    return y.to(x.dtype)
