"""Snapshot slots of the conv and gated-delta-rule references (prefix-cache tracking): the state
after the first t new tokens of a sequence, written to an extra slot during the same call."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from qnext.kernels import (
    causal_conv1d_update_ref,
    causal_conv1d_varlen_ref,
    chunk_gated_delta_rule_ref,
    fused_recurrent_gated_delta_rule_ref,
    gdn_gating_ref,
)
from tests.unit.kernels.helpers import cu, maxdiff

HK, HV, DK, DV, CH, KS = 2, 4, 16, 8, 6, 4
LENGTHS = [70, 130, 5]
HAS_INIT = [True, False, True]
WORKING = [1, 2, 3]  # working slots; snapshot slots are 5..7; the pool has 9 slots
DTYPES = [torch.float64, torch.float32]


def _tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-5


def _gdn_inputs(T: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    q, k = (torch.randn(T, HK, DK, dtype=dtype) for _ in range(2))
    v = torch.randn(T, HV, DV, dtype=dtype)
    g, beta = gdn_gating_ref(torch.randn(HV, dtype=dtype) * 0.5, torch.randn(T, HV, dtype=dtype),
                             torch.randn(T, HV, dtype=dtype), torch.randn(HV, dtype=dtype))
    return q, k, v, g, beta


def _run_ssm(inputs, lengths, pool, has_init, slots, **snapshots) -> torch.Tensor:
    return chunk_gated_delta_rule_ref(
        *inputs, cu_seqlens=cu(lengths), ssm_states=pool, state_indices=torch.tensor(slots),
        has_initial_state=torch.tensor(has_init), **snapshots)


def _run_conv(inputs, lengths, pool, has_init, slots, *, weight, **snapshots) -> torch.Tensor:
    return causal_conv1d_varlen_ref(
        *inputs, weight, cu_seqlens=cu(lengths), conv_states=pool,
        state_indices=torch.tensor(slots), has_initial_state=torch.tensor(has_init), **snapshots)


def _snapshot_args(snap_slots: list[int], offsets: list[int]) -> dict[str, torch.Tensor]:
    return dict(snapshot_slots=torch.tensor(snap_slots), snapshot_offsets=torch.tensor(offsets))


def _check_snapshots(run, inputs, before, snap_slots, offsets, dtype):
    """One call with snapshots vs: the same call without (outputs and working slots must not
    change), and each snapshot vs a call on just the first t tokens of its sequence.
    inputs: the token-major tensors [T, ...] of `run`."""
    pool, plain = before.clone(), before.clone()
    out = run(inputs, LENGTHS, pool, HAS_INIT, WORKING, **_snapshot_args(snap_slots, offsets))
    assert torch.equal(out, run(inputs, LENGTHS, plain, HAS_INIT, WORKING))
    assert torch.equal(pool[WORKING], plain[WORKING])
    starts = cu(LENGTHS).tolist()
    for b, (snap, t) in enumerate(zip(snap_slots, offsets, strict=True)):
        if snap < 0:
            continue
        prefix = [x[starts[b]:starts[b] + t] for x in inputs]
        alone = before.clone()
        run(prefix, [t], alone, [HAS_INIT[b]], [WORKING[b]])
        assert maxdiff(pool[snap], alone[WORKING[b]]) <= _tol(dtype), (b, t)
        assert pool[snap].abs().sum() > 0
    untouched = [s for s in range(before.shape[0]) if s not in WORKING + snap_slots]
    assert torch.equal(pool[untouched], before[untouched])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("snap_slots,offsets", [
    ([5, 6, 7], [64, 128, 5]),  # chunk boundaries, and t == L for a short sequence
    ([6, 5, -1], [70, 64, 0]),  # t == L of a non-aligned length; the last one takes none
])
def test_ssm_snapshot_equals_prefix_run(dtype, snap_slots, offsets):
    torch.manual_seed(11)
    inputs = _gdn_inputs(sum(LENGTHS), dtype)
    before = torch.randn(9, HV, DK, DV, dtype=dtype) * 0.3
    _check_snapshots(_run_ssm, inputs, before, snap_slots, offsets, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("snap_slots,offsets", [
    ([5, 6, 7], [1, 129, 2]),  # t < K-1 with an initial state reads into the old state
    ([7, -1, 5], [70, 0, 5]),
    ([6, 5, -1], [33, 64, 0]),
])
def test_conv_snapshot_equals_prefix_run(dtype, snap_slots, offsets):
    torch.manual_seed(12)
    run = partial(_run_conv, weight=torch.randn(CH, KS, dtype=dtype))
    before = torch.randn(9, CH, KS - 1, dtype=dtype)
    _check_snapshots(run, (torch.randn(sum(LENGTHS), CH, dtype=dtype),), before, snap_slots,
                     offsets, dtype)


@pytest.mark.parametrize("offsets", [[65, 128, 5], [64, 0, 5], [64, 131, 5]])
def test_ssm_bad_offset_raises_before_writing(offsets):
    torch.manual_seed(13)
    inputs = _gdn_inputs(sum(LENGTHS), torch.float32)
    pool = torch.randn(9, HV, DK, DV)
    before = pool.clone()
    with pytest.raises(ValueError, match="snapshot offset"):
        _run_ssm(inputs, LENGTHS, pool, HAS_INIT, WORKING, **_snapshot_args([5, 6, 7], offsets))
    assert torch.equal(pool, before)


@pytest.mark.parametrize("offsets", [[0, 1, 1], [1, 1, 6]])
def test_conv_bad_offset_raises(offsets):
    with pytest.raises(ValueError, match="snapshot offset"):
        _run_conv((torch.randn(sum(LENGTHS), CH),), LENGTHS, torch.randn(9, CH, KS - 1), HAS_INIT,
                  WORKING, weight=torch.randn(CH, KS), **_snapshot_args([5, 6, 7], offsets))


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_refs_copy_updated_state(dtype):
    torch.manual_seed(14)
    slots = torch.tensor([4, 1, 2])
    q, k, v, g, beta = _gdn_inputs(3, dtype)
    x, w = torch.randn(3, CH, dtype=dtype), torch.randn(CH, KS, dtype=dtype)
    ssm, conv = torch.randn(7, HV, DK, DV, dtype=dtype), torch.randn(7, CH, KS - 1, dtype=dtype)
    plain_ssm, plain_conv = ssm.clone(), conv.clone()
    for snaps, ssm_pool, conv_pool in ((torch.tensor([6, -1, 5]), ssm, conv),
                                       (None, plain_ssm, plain_conv)):
        fused_recurrent_gated_delta_rule_ref(q, k, v, g, beta, ssm_states=ssm_pool,
                                             state_indices=slots, snapshot_slots=snaps)
        causal_conv1d_update_ref(x, w, conv_states=conv_pool, state_indices=slots,
                                 snapshot_slots=snaps)
    for pool, plain in ((ssm, plain_ssm), (conv, plain_conv)):
        assert torch.equal(pool[slots], plain[slots])  # working slots as without snapshots
        assert torch.equal(pool[6], pool[4]) and torch.equal(pool[5], pool[2])
        assert torch.equal(pool[[0, 3]], plain[[0, 3]]) and not torch.equal(pool[6], plain[6])
