"""The Triton decode kernel of the gated delta rule against its torch reference on the GPU:
fresh random inputs, outputs and untouched slots poisoned first, grouped heads (32:16, TP4's
8:4, 6:3 odd), odd batch sizes, fp32 and bf16 states and operands, snapshot slots."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS  # noqa: E402

pytestmark = KERNEL_MARKS

from qnext.kernels import (  # noqa: E402
    fused_recurrent_gated_delta_rule_ref, gated_rms_norm_ref, gdn_gating_ref)
from qnext.kernels.launch import interpreting  # noqa: E402
from tests.unit.kernels.helpers import rel_err  # noqa: E402


def _inputs(B, hk, hv, dk, dv, dtype, state_dtype, slots, seed):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def r(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, device=DEVICE, dtype=torch.float32).to(dt)

    x = dict(q=r(B, hk, dk), k=r(B, hk, dk), v=r(B, hv, dv), a=r(B, hv), b=r(B, hv),
             A_log=torch.log(torch.rand(hv, generator=gen, device=DEVICE) * 0.9 + 0.1),
             dt_bias=r(hv, dt=torch.float32))
    states = r(slots, hv, dk, dv, dt=state_dtype) * 0.5
    index = torch.randperm(slots - 1, generator=gen, device=DEVICE)[:2 * B] + 1
    return x, states, index[:B], index[B:]


@pytest.mark.parametrize("B,hk,hv,dk,dv", [(1, 16, 32, 128, 128), (33, 16, 32, 128, 128),
                                           (7, 4, 8, 128, 128), (5, 3, 6, 64, 96)])
@pytest.mark.parametrize("dtype,state_dtype,tol", [
    (torch.float32, torch.float32, 1e-3), (torch.bfloat16, torch.float32, 1e-2),
    (torch.bfloat16, torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("snapshot", [False, True])
def test_decode_kernel_matches_reference(B, hk, hv, dk, dv, dtype, state_dtype, tol, snapshot):
    from qnext.kernels.gdn_decode import gdn_decode

    x, states, slots, spare = _inputs(B, hk, hv, dk, dv, dtype, state_dtype, 2 * B + 3, B)
    snaps = torch.where(torch.arange(B, device=DEVICE) % 2 == 0, spare, -1) if snapshot \
        else None
    ref_states = states.clone()
    g, beta = gdn_gating_ref(x["A_log"], x["a"], x["b"], x["dt_bias"])
    want = fused_recurrent_gated_delta_rule_ref(x["q"], x["k"], x["v"], g, beta,
                                                ssm_states=ref_states, state_indices=slots)
    states_before = states.clone()
    got = gdn_decode(**x, ssm_states=states, state_indices=slots, snapshot_slots=snaps)
    assert not torch.isnan(got).any()
    assert rel_err(got, want) <= tol
    assert rel_err(states[slots], ref_states[slots]) <= tol
    untouched = torch.ones(states.shape[0], dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    if snapshot:
        taken = snaps[snaps >= 0]
        untouched[taken] = False
        assert torch.equal(states[taken], states[slots[snaps >= 0]])
    assert torch.equal(states[untouched], states_before[untouched])


def test_launcher_rejects_bad_shapes():
    from qnext.kernels.gdn_decode import gdn_decode

    x, states, slots, _ = _inputs(2, 2, 4, 64, 64, torch.float32, torch.float32, 8, 0)
    with pytest.raises(ValueError, match="multiple"):
        gdn_decode(**{**x, "v": x["v"][:, :3], "a": x["a"][:, :3], "b": x["b"][:, :3],
                      "A_log": x["A_log"][:3], "dt_bias": x["dt_bias"][:3]},
                   ssm_states=states[:, :3], state_indices=slots)
    with pytest.raises(ValueError, match="ssm_states"):
        gdn_decode(**x, ssm_states=states.transpose(2, 3), state_indices=slots)
    big = 65536  # one past the grid's z limit, where the sequences go
    x, states, _, _ = _inputs(big, 1, 1, 2, 2, torch.float32, torch.float32, 2, 0)
    with pytest.raises(ValueError, match="split it"):
        gdn_decode(**x, ssm_states=states, state_indices=torch.zeros(big, dtype=torch.long,
                                                                     device=DEVICE))


@pytest.mark.parametrize("B,hk,hv,dk,dv", [(1, 4, 8, 128, 128), (6, 3, 6, 64, 96),
                                           (37, 16, 32, 128, 128)])
@pytest.mark.parametrize("dtype,state_dtype", [(torch.float32, torch.float32),
                                               (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("snapshot", [False, True])
def test_output_norm_inside_the_kernel_equals_the_norm_after_it(B, hk, hv, dk, dv, dtype,
                                                                state_dtype, snapshot):
    """norm=(z, w, eps): the GDN output norm applied by the head-a-program kernel gives what
    `gated_rms_norm` gives on the plain kernel's output (z a head view of a wider projection,
    as the layer passes it), and the same state update and snapshots up to rounding (dv = 96:
    a head of two column blocks, the second half masked)."""
    from qnext.kernels.gdn_decode import gdn_decode
    from qnext.kernels.norm import gated_rms_norm

    x, states, slots, spare = _inputs(B, hk, hv, dk, dv, dtype, state_dtype, 2 * B + 3, 40 + B)
    snaps = torch.where(torch.arange(B, device=DEVICE) % 3 == 0, spare, -1) if snapshot \
        else None
    gen = torch.Generator(device=DEVICE).manual_seed(B)
    wide = torch.randn(B, hv * dv + 5, generator=gen, device=DEVICE).to(dtype)
    z = wide[:, :hv * dv].unflatten(-1, (hv, dv))
    weight = torch.rand(dv, generator=gen, device=DEVICE) + 0.5
    states_before, plain_states = states.clone(), states.clone()
    want = gated_rms_norm(gdn_decode(**x, ssm_states=plain_states, state_indices=slots,
                                     snapshot_slots=snaps), z, weight.to(dtype), 1e-6)
    got = gdn_decode(**x, ssm_states=states, state_indices=slots, snapshot_slots=snaps,
                     norm=(z, weight.to(dtype), 1e-6))
    assert rel_err(states, plain_states) <= 1e-6  # the snapshot slots included
    assert not torch.isnan(got).any()
    ref_states = states_before.clone()
    g, beta = gdn_gating_ref(x["A_log"], x["a"], x["b"], x["dt_bias"])
    ref = gated_rms_norm_ref(fused_recurrent_gated_delta_rule_ref(
        x["q"], x["k"], x["v"], g, beta, ssm_states=ref_states, state_indices=slots), z,
        weight.to(dtype), 1e-6)
    # Triton's CPU interpreter truncates float32 -> bf16 (the GPU rounds to nearest): the
    # norm's three bf16 roundings then shrink the output ~0.8 %, hence its wider bound
    bf16_tol = 2e-2 if interpreting() else 1e-2
    assert rel_err(got, ref) <= (1e-3 if dtype == torch.float32 else bf16_tol)
    assert got.dtype == dtype and rel_err(got, want) <= (1e-5 if dtype == torch.float32
                                                         else 1e-2)
    with pytest.raises(ValueError, match="norm z"):
        gdn_decode(**x, ssm_states=states, state_indices=slots, norm=(z[:, :1], weight, 1e-6))
