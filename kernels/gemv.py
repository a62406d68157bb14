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

`conv=(...)` (one row): the first C output columns go through the GDN input's causal conv
(`conv_decode.conv_token`: window = state | y, SiLU, the state shifted in place) before they are
stored — the conv's launch saved (each program owns whole channels, so no state is touched
twice). `norm=(z, w, eps)`: x first goes through the GDN output norm, per group of len(w) lanes
(a value head): w · x / rms(x) · silu(z), rounded where `gated_rms_norm_ref` rounds, then to
x.dtype as that reference's output is. Every program has whole groups of x in its slice (one row
of x: all of it), so the norm costs no launch and no round trip: the GDN layer's decode step
runs its delta-rule kernel without the norm epilogue (which limits that kernel to one program a
head) and its output projection here. Reference: F.linear of gated_rms_norm_ref.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qnext.kernels.conv_decode import conv_token
from qnext.kernels.launch import check_device
from qnext.kernels.norm import gated_rms_rows

BN = 4  # weight rows a program
MAX_ROWS = 16  # rows of x (tokens) the kernel takes
TILE = 8192  # x rows x weight rows x reduction lanes a step: 64 products a thread (4 warps)


@triton.jit
def _normed_groups(x, z_ptrs, mask, g_ptr, eps, BM: tl.constexpr, BK: tl.constexpr,
                   G: tl.constexpr):
    """x [BM, BK] (storage dtype) through the gated norm per G lanes -> float32 of x.dtype."""
    z = tl.load(z_ptrs, mask=mask, other=0.0)
    rows: tl.constexpr = BM * (BK // G)
    y = gated_rms_rows(tl.reshape(x, (rows, G)), tl.reshape(z, (rows, G)), g_ptr,
                       tl.arange(0, G), G, eps)
    return tl.reshape(y, (BM, BK)).to(x.dtype).to(tl.float32)


@triton.jit
def _conv_columns(acc, offs_n, n_ok, CN, cw_ptr, cs_ptr, slot_ptr, snap_ptr, s_ss, s_sc,
                  dtype: tl.constexpr, BN: tl.constexpr, KC: tl.constexpr,
                  BKC: tl.constexpr, HAS_SNAP: tl.constexpr):
    """acc [1, BN]: columns below CN through the causal conv + SiLU of their state (one
    token), the rest as they are; values rounded to the output dtype first, as stored."""
    row = tl.reshape(acc, (BN,)).to(dtype).to(tl.float32)
    is_conv = n_ok & (offs_n < CN)
    conv = conv_token(row, offs_n, is_conv, cw_ptr, cs_ptr, slot_ptr, snap_ptr, s_ss, s_sc, KC,
                      BKC, True, HAS_SNAP)
    return tl.reshape(tl.where(is_conv, conv, row), (1, BN))


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, z_ptr, g_ptr, M, N, s_xm, s_wn, s_ym, s_zm, eps,
                 cw_ptr, cs_ptr, slot_ptr, snap_ptr, CN, s_ss, s_sc,
                 K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 G: tl.constexpr, KC: tl.constexpr, BKC: tl.constexpr, HAS_SNAP: tl.constexpr):
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    n_ok, m_ok = offs_n < N, offs_m < M
    x_ptrs = x_ptr + offs_m[:, None] * s_xm + offs_k[None, :]
    z_ptrs = z_ptr + offs_m[:, None] * s_zm + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * s_wn + offs_k[None, :]
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K, BK):
        k_ok = offs_k < K - k0
        xm = m_ok[:, None] & k_ok[None, :]
        x = tl.load(x_ptrs, mask=xm, other=0.0)
        if G > 0:  # constexpr: the GDN output norm first
            x = _normed_groups(x, z_ptrs, xm, g_ptr, eps, BM, BK, G)
        else:
            x = x.to(tl.float32)
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
        x_ptrs += BK
        z_ptrs += BK
        w_ptrs += BK
    if KC > 0:  # constexpr; one row of x
        acc = _conv_columns(acc, offs_n, n_ok, CN, cw_ptr, cs_ptr, slot_ptr, snap_ptr, s_ss,
                            s_sc, y_ptr.dtype.element_ty, BN, KC, BKC, HAS_SNAP)
    tl.store(y_ptr + offs_m[:, None] * s_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def takes(x: torch.Tensor) -> bool:
    """Whether `gemv` takes this input: 1..MAX_ROWS rows."""
    return x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS


def gemv(x: torch.Tensor, weight: torch.Tensor,
         norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
         conv: tuple | None = None) -> torch.Tensor:
    """F.linear(x, weight) for x [M <= MAX_ROWS, K] (contiguous rows) and weight [N, K]
    (contiguous rows, x's dtype): y [M, N] in x.dtype. `norm` = (z [M, K] with contiguous
    rows, w [G], eps): x through the GDN output norm first; `conv` = (conv weight [C <= N,
    Kc], conv_states, state_indices, snapshot_slots or None), one row of x: y's first C
    columns through `conv_decode`'s conv + SiLU, states updated (module docstring)."""
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
    bk = _slice(K, bm)
    z, g, eps = norm if norm is not None else (x, x, 0.0)
    group = _check_norm(x, z, g) if norm is not None else 0
    cw, states, slots, snaps = conv if conv is not None else (x, x, x, None)
    taps = _check_conv(x, N, cw, states, slots, snaps) if conv is not None else 0
    _gemv_kernel[(triton.cdiv(N, BN),)](
        x, weight, y, z, g, M, N, x.stride(0), weight.stride(0), y.stride(0), z.stride(0), eps,
        cw, states, slots, slots if snaps is None else snaps, cw.shape[0] if taps else 0,
        states.stride(0), states.stride(1) if taps else 0, K=K, BM=bm, BN=BN, BK=bk, G=group,
        KC=taps, BKC=triton.next_power_of_2(max(taps, 1)), HAS_SNAP=snaps is not None,
        num_warps=4)
    return y


def _check_conv(x: torch.Tensor, N: int, cw: torch.Tensor, states: torch.Tensor,
                slots: torch.Tensor, snaps: torch.Tensor | None) -> int:
    C, taps = cw.shape if cw.dim() == 2 else (0, 0)
    if x.shape[0] != 1 or not 0 < C <= N or not cw.is_contiguous() or not 2 <= taps <= 8:
        raise ValueError(f"conv: one row of x and a contiguous weight [C <= {N}, 2..8], got "
                         f"x {tuple(x.shape)}, weight {tuple(cw.shape)}")
    if states.dim() != 3 or states.shape[1:] != (C, taps - 1) or states.stride(2) != 1 \
            or slots.shape != (1,) or (snaps is not None and snaps.shape != (1,)):
        raise ValueError(f"conv states {tuple(states.shape)} must be [S, {C}, {taps - 1}] "
                         "(last dim contiguous), state_indices / snapshot_slots [1]")
    check_device("gemv", cw, states, slots)
    return taps


def _slice(K: int, bm: int) -> int:
    return min(triton.next_power_of_2(K), TILE // (bm * BN))


def takes_norm(rows: int, cols: int, group: int) -> bool:
    """Whether `gemv` takes an x [rows, cols] with a norm over groups of `group` lanes: a
    power of 2 that divides cols and the slice each program reads."""
    return 0 < rows <= MAX_ROWS and group > 0 and not group & (group - 1) \
        and cols % group == 0 and _slice(cols, triton.next_power_of_2(rows)) % group == 0


def _check_norm(x: torch.Tensor, z: torch.Tensor, g: torch.Tensor) -> int:
    group = g.numel()
    if not takes_norm(*x.shape, group):  # the slice: the kernel's `bk`, from `_slice`
        raise ValueError(f"norm weight of {group} lanes must be a power of 2 dividing "
                         f"K = {x.shape[1]} and the slice "
                         f"{_slice(x.shape[1], triton.next_power_of_2(x.shape[0]))}")
    if z.shape != x.shape or z.stride(1) != 1 or z.dtype != x.dtype or g.dim() != 1:
        raise ValueError(f"norm z {tuple(z.shape)} {z.dtype} must be x's shape "
                         f"{tuple(x.shape)} and dtype with contiguous rows, w 1-D")
    check_device("gemv", z, g)
    return group
