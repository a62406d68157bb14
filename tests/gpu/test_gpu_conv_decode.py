"""The Triton conv1d decode kernel against its torch reference on the GPU: fresh random
inputs, channel counts 8192 (one TP1 rank), 2048 (TP4) and 100 (odd), kernel widths 4 and 3,
odd batches, fp32 and bf16, snapshot slots, untouched slots bit-identical."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS  # noqa: E402

pytestmark = KERNEL_MARKS

from qnext.kernels import causal_conv1d_update_ref  # noqa: E402
from tests.unit.kernels.helpers import rel_err  # noqa: E402


@pytest.mark.parametrize("B,C,K", [(1, 8192, 4), (33, 2048, 4), (5, 100, 3)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("snapshot", [False, True])
def test_conv_decode_matches_reference(B, C, K, dtype, tol, snapshot):
    from qnext.kernels.conv_decode import conv_decode

    gen = torch.Generator(device=DEVICE).manual_seed(B + C)

    def r(*shape):
        return torch.randn(*shape, generator=gen, device=DEVICE).to(dtype)

    wide = r(B, C + 7)  # rows strided like a slice of the fused projection
    x, w = wide[:, 3:3 + C], r(C, K)
    states = r(2 * B + 3, C, K - 1)
    perm = torch.randperm(2 * B + 2, generator=gen, device=DEVICE) + 1
    slots, spare = perm[:B], perm[B:2 * B]
    snaps = torch.where(torch.arange(B, device=DEVICE) % 2 == 0, spare, -1) if snapshot \
        else None
    ref_states, before = states.clone(), states.clone()
    want = causal_conv1d_update_ref(x, w, conv_states=ref_states, state_indices=slots)
    got = conv_decode(x, w, conv_states=states, state_indices=slots, snapshot_slots=snaps)
    assert not torch.isnan(got).any() and rel_err(got, want) <= tol
    assert torch.equal(states[slots], ref_states[slots])  # a shift plus a copy: exact
    untouched = torch.ones(states.shape[0], dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    if snapshot:
        taken = snaps >= 0
        untouched[snaps[taken]] = False
        assert torch.equal(states[snaps[taken]], states[slots[taken]])
    assert torch.equal(states[untouched], before[untouched])
