"""The Triton RMSNorm kernels against their torch references on the GPU: fresh random inputs,
row counts 1 / 7 / 513, widths 2048 (hidden), 128 (GDN head), 100 (odd), fp32 and bf16."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS  # noqa: E402

pytestmark = KERNEL_MARKS

from qnext.kernels import gated_rms_norm_ref, rms_norm_ref  # noqa: E402
from tests.unit.kernels.helpers import rel_err  # noqa: E402

SHAPES = [(1, 2048), (7, 2048), (513, 128), (7, 100)]
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)]


def _rand(shape, dtype, seed):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randn(*shape, generator=gen, device=DEVICE).to(dtype)


@pytest.mark.parametrize("rows,dim", SHAPES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm(rows, dim, dtype, tol, with_residual):
    from qnext.kernels.norm import add_rms_norm

    x, r = _rand((rows, dim), dtype, 1), _rand((rows, dim), dtype, 2)
    w = _rand((dim,), dtype, 3) * 0.1
    if with_residual:
        y, s = add_rms_norm(x, w, 1e-6, residual=r)
        want_y, want_s = rms_norm_ref(x, w, 1e-6, residual=r)
        assert torch.equal(s, want_s)
    else:
        y, want_y = add_rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6)
    assert not torch.isnan(y).any() and rel_err(y, want_y) <= tol


@pytest.mark.parametrize("rows,dim", SHAPES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_gated_rms_norm(rows, dim, dtype, tol):
    from qnext.kernels.norm import gated_rms_norm

    x, z = _rand((rows, dim), dtype, 4), _rand((rows, dim), dtype, 5)
    w = 1.0 + _rand((dim,), dtype, 6) * 0.1
    y = gated_rms_norm(x, z, w, 1e-6)
    assert not torch.isnan(y).any() and rel_err(y, gated_rms_norm_ref(x, z, w, 1e-6)) <= tol


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_gated_rms_norm_reads_z_as_a_column_slice(dtype, tol):
    """z as the GDN projection hands it over: [T, H, D] heads of a wider row, not contiguous."""
    from qnext.kernels.norm import gated_rms_norm

    T, H, D = 5, 3, 64
    proj = _rand((T, 2 * H * D + 9), dtype, 7)
    z = proj[:, 9:9 + H * D].unflatten(-1, (H, D))
    x, w = _rand((T, H, D), dtype, 8), 1.0 + _rand((D,), dtype, 9) * 0.1
    y = gated_rms_norm(x, z, w, 1e-6)
    assert not z.is_contiguous() and not torch.isnan(y).any()
    assert rel_err(y, gated_rms_norm_ref(x, z, w, 1e-6)) <= tol


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_rms_norm_reads_heads_of_a_wider_row(dtype, tol):
    """x as attention hands q over: [T, H, D] heads of a [q | gate] row, not contiguous."""
    from qnext.kernels.norm import add_rms_norm

    T, H, D = 5, 3, 64
    proj = _rand((T, H, 2 * D), dtype, 10)
    x, w = proj[..., :D], _rand((D,), dtype, 11) * 0.1
    y = add_rms_norm(x, w, 1e-6)
    assert not x.is_contiguous() and y.is_contiguous() and not torch.isnan(y).any()
    assert rel_err(y, rms_norm_ref(x, w, 1e-6)) <= tol
    with pytest.raises(ValueError, match="contiguous"):
        add_rms_norm(x, w, 1e-6, residual=_rand((T, H, D), dtype, 12))


def test_launchers_reject_bad_inputs():
    from qnext.kernels.norm import add_rms_norm, gated_rms_norm

    x = _rand((4, 64), torch.float32, 0)
    with pytest.raises(ValueError, match="weight"):
        add_rms_norm(x, torch.ones(32, device=DEVICE), 1e-6)
    with pytest.raises(ValueError, match="contiguous"):
        gated_rms_norm(x.t(), x.t(), torch.ones(4, device=DEVICE), 1e-6)


@pytest.mark.parametrize("rows,dim", SHAPES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_combine_add_rms_norm(rows, dim, dtype, tol):
    """One rank's MoE rows (3 a token, some ids dropped) summed, added and normalised in one
    kernel: h as ExpertRows.combine() + residual gives it, y within the norm's tolerance."""
    from qnext.kernels.expert_rows import ExpertRows
    from qnext.kernels.combine_norm import combine_add_rms_norm

    gen = torch.Generator(device=DEVICE).manual_seed(rows + dim)
    ids = torch.randint(-1, 6, (rows, 3), generator=gen, device=DEVICE)  # E = 5: -1, 5 dropped
    expert_rows = ExpertRows(_rand((rows * 3, dim), dtype, 7), ids, 5)
    residual, w = _rand((rows, dim), dtype, 8), _rand((dim,), dtype, 9) * 0.1
    combined = expert_rows.combine()
    y, h = combine_add_rms_norm(expert_rows, residual, w, 1e-6)
    want_y, want_h = rms_norm_ref(combined, w, 1e-6, residual)
    assert rel_err(h, want_h) <= tol and (dtype != torch.float32 or torch.equal(h, want_h))
    assert not torch.isnan(y).any() and rel_err(y, want_y) <= tol
