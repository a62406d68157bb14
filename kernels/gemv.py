"""Triton: y = x Wᵀ for decode-sized batches (at most `MAX_ROWS` rows of x) as a GEMV spread
over many programs.

At batch 1 the dense projections of a decode step are matrix-vector products that only
stream their weights. cuBLAS ran them at ≈ 5.2 µs each on 4 x H200 (TP4, 99 a step; the
weights' floor averages ≈ 1.8 µs), with few CTAs for one row. Here one program owns `BN` rows
of W and reads them in BK-wide slices (16 KB a step at one row of x), multiplying every row
of x in float32 on CUDA cores, so an N-row weight makes N / 4 programs — 772 for the GDN
input projection at TP4 — all resident at once.

layers/linear.py's `dense` uses it for one row by default (`QNEXT_DENSE_GEMV` rows): on an H200
it beat cuBLAS at one row and lost from four on (scripts/bench_gemv.py, docs/perf/kernels.md).
Reference: `F.linear` (float32 accumulation; rounded once to x.dtype).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.launch import check_device

BN = 4  # weight rows a program
MAX_ROWS = 16  # rows of x (tokens) the kernel takes
TILE = 8192  # x rows x weight rows x reduction lanes a step: 64 products a thread (4 warps)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, M, N, s_xm, s_wn, s_ym, K: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    n_ok, m_ok = offs_n < N, offs_m < M
    x_ptrs = x_ptr + offs_m[:, None] * s_xm + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * s_wn + offs_k[None, :]
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K, BK):
        k_ok = offs_k < K - k0
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
        x_ptrs += BK
        w_ptrs += BK
    tl.store(y_ptr + offs_m[:, None] * s_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def takes(x: torch.Tensor) -> bool:
    """Whether `gemv` takes this input: 1..MAX_ROWS rows."""
    return x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) for x [M <= MAX_ROWS, K] (contiguous rows) and weight [N, K]
    (contiguous rows, x's dtype): y [M, N] in x.dtype."""
    if not takes(x) or x.stride(1) != 1:
        raise ValueError(f"x {tuple(x.shape)} must be [1..{MAX_ROWS}, K] with contiguous rows")
    M, K = x.shape
    if weight.dim() != 2 or weight.shape[1] != K or weight.stride(1) != 1 \
            or weight.dtype != x.dtype:
        raise ValueError(f"weight {tuple(weight.shape)} {weight.dtype} must be [N, K={K}] "
                         f"with contiguous rows in x's dtype {x.dtype}")
    check_device("gemv", x, weight)
    N = weight.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    bm = triton.next_power_of_2(M)
    bk = min(triton.next_power_of_2(K), TILE // (bm * BN))
    _gemv_kernel[(triton.cdiv(N, BN),)](x, weight, y, M, N, x.stride(0), weight.stride(0),
                                        y.stride(0), K=K, BM=bm, BN=BN, BK=bk, num_warps=4)
    return y
