"""The decode GEMV (`kernels/gemv.py`) against F.linear: odd row / column counts, rows of x
with a stride (a slice of a wider activation), every row count up to MAX_ROWS, fp32 (and bf16
on the GPU); bad shapes rejected."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS, ON_GPU, generator  # noqa: E402

pytestmark = KERNEL_MARKS

from tests.unit.kernels.helpers import rel_err  # noqa: E402

DTYPES = [(torch.float32, 1e-5)] + ([(torch.bfloat16, 1e-2)] if ON_GPU else [])
SHAPES = [(1, 7, 64), (3, 37, 1000), (8, 3088, 2048), (16, 5, 130), (1, 2048, 1024)]


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_gemv_matches_linear(M, N, K, dtype, tol):
    from qnext.kernels.gemv import gemv

    gen = generator(M * N + K)
    wide = torch.randn(M, K + 9, generator=gen, device=DEVICE).to(dtype)
    x = wide[:, 3:K + 3]  # rows with a stride, as a column slice hands them over
    weight = (torch.randn(N, K, generator=gen, device=DEVICE) * K**-0.5).to(dtype)
    got = gemv(x, weight)
    want = F.linear(x.float(), weight.float())
    assert got.dtype == dtype and got.shape == (M, N) and not torch.isnan(got).any()
    assert rel_err(got.float(), want) <= tol


def test_gemv_rejects_what_it_does_not_take():
    from qnext.kernels.gemv import MAX_ROWS, gemv

    x, w = torch.randn(2, 8, device=DEVICE), torch.randn(5, 8, device=DEVICE)
    with pytest.raises(ValueError, match="rows"):
        gemv(torch.randn(MAX_ROWS + 1, 8, device=DEVICE), w)
    with pytest.raises(ValueError, match="weight"):
        gemv(x, w[:, :7])
    with pytest.raises(ValueError, match="weight"):
        gemv(x, w.double())


@pytest.mark.parametrize("M,heads,group,N", [(1, 8, 128, 2048), (3, 5, 64, 37), (1, 4, 16, 9)])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_gemv_with_the_gdn_norm_is_linear_of_the_normed_rows(M, heads, group, N, dtype, tol):
    """norm=(z, w, eps): F.linear of gated_rms_norm_ref's output (z a column slice of a wider
    projection, as the GDN layer hands it over)."""
    from qnext.kernels.gemv import gemv
    from qnext.kernels.norm_ref import gated_rms_norm_ref

    K = heads * group
    gen = generator(M * K + N)
    x = torch.randn(M, K, generator=gen, device=DEVICE).to(dtype)
    z = torch.randn(M, K + 6, generator=gen, device=DEVICE).to(dtype)[:, 2:K + 2]
    w = (torch.rand(group, generator=gen, device=DEVICE) + 0.5).to(dtype)
    weight = (torch.randn(N, K, generator=gen, device=DEVICE) * K**-0.5).to(dtype)
    normed = gated_rms_norm_ref(x.view(M, heads, group), z.reshape(M, heads, group), w, 1e-6)
    want = F.linear(normed.reshape(M, K).float(), weight.float())
    got = gemv(x, weight, norm=(z, w, 1e-6))
    assert got.dtype == dtype and not torch.isnan(got).any()
    assert rel_err(got.float(), want) <= tol


def test_gemv_norm_rejects_groups_it_cannot_hold():
    from qnext.kernels.gemv import gemv, takes_norm

    x, weight = torch.randn(1, 96, device=DEVICE), torch.randn(5, 96, device=DEVICE)
    assert takes_norm(1, 96, 32) and not takes_norm(1, 96, 48) and not takes_norm(1, 96, 64)
    with pytest.raises(ValueError, match="power of 2"):
        gemv(x, weight, norm=(x, torch.ones(48, device=DEVICE), 1e-6))
    with pytest.raises(ValueError, match="norm z"):
        gemv(x, weight, norm=(x[:, :64], torch.ones(32, device=DEVICE), 1e-6))


@pytest.mark.parametrize("N,C,taps,snap", [(40, 24, 4, False), (37, 37, 4, True),
                                           (2048, 1000, 3, True)])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_gemv_with_the_conv_is_the_projection_then_conv_decode(N, C, taps, snap, dtype, tol):
    """conv=(...): the first C columns of one row's projection through `conv_decode`'s
    reference (state shifted in place, a snapshot slot written), the rest untouched."""
    from qnext.kernels.conv_ref import causal_conv1d_update_ref
    from qnext.kernels.gemv import gemv

    gen, K = generator(N + C + taps), 96
    x = torch.randn(1, K, generator=gen, device=DEVICE).to(dtype)
    weight = (torch.randn(N, K, generator=gen, device=DEVICE) * K**-0.5).to(dtype)
    cw = torch.randn(C, taps, generator=gen, device=DEVICE).to(dtype)
    states = torch.randn(6, C, taps - 1, generator=gen, device=DEVICE).to(dtype)
    slots = torch.tensor([4], device=DEVICE)
    snaps = torch.tensor([1], device=DEVICE) if snap else None
    want_states = states.clone()
    want = F.linear(x.float(), weight.float()).to(dtype)
    want[:, :C] = causal_conv1d_update_ref(want[:, :C].clone(), cw, conv_states=want_states,
                                           state_indices=slots, snapshot_slots=snaps)
    got = gemv(x, weight, conv=(cw, states, slots, snaps))
    assert rel_err(got.float(), want.float()) <= tol
    assert rel_err(states.float(), want_states.float()) <= tol
    assert torch.equal(states[[0, 2, 3, 5]], want_states[[0, 2, 3, 5]])  # other slots


def test_gemv_conv_takes_one_row():
    from qnext.kernels.gemv import gemv

    x, weight = torch.randn(2, 8, device=DEVICE), torch.randn(5, 8, device=DEVICE)
    conv = (torch.randn(4, 4, device=DEVICE), torch.randn(2, 4, 3, device=DEVICE),
            torch.tensor([0], device=DEVICE), None)
    with pytest.raises(ValueError, match="one row"):
        gemv(x, weight, conv=conv)
