"""Verify references (speculative decoding over recurrent state) against the decode references
applied along each draft token's root path on a copy of the pool; float64, the pool untouched."""

from __future__ import annotations

import pytest
import torch

from qnext.kernels import causal_conv1d_update_ref, fused_recurrent_gated_delta_rule_ref
from qnext.kernels.verify_ref import conv_verify_ref, gdn_verify_ref, verify_parents
from tests.unit.kernels.helpers import maxdiff

TIGHT = 1e-12
F64 = torch.float64


def random_parents(B: int, T: int, gen: torch.Generator) -> torch.Tensor:
    """Valid random trees: parents[b, t] uniform in [-1, t)."""
    steps = torch.arange(T)
    return (torch.rand(B, T, generator=gen, dtype=F64) * (steps + 1)).floor().long() - 1


def root_path(parents: torch.Tensor | None, b: int, t: int) -> list[int]:
    """Draft steps from the committed state down to step t, in order."""
    path = [t]
    while (p := (path[-1] - 1 if parents is None else int(parents[b, path[-1]]))) >= 0:
        path.append(p)
    return path[::-1]


def _gdn_case(B, T, hk, hv, dk, dv, slots, gen):
    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    x = dict(q=r(B, T, hk, dk), k=r(B, T, hk, dk), v=r(B, T, hv, dv),
             g=-torch.rand(B, T, hv, generator=gen, dtype=F64),
             beta=torch.rand(B, T, hv, generator=gen, dtype=F64))
    return x, r(slots, hv, dk, dv) * 0.5, torch.randperm(slots, generator=gen)[:B]


@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("B,T,hk,hv", [(1, 1, 1, 2), (3, 4, 2, 4), (2, 7, 3, 6)])
def test_gdn_verify_equals_decode_along_root_paths(tree, B, T, hk, hv):
    gen = torch.Generator().manual_seed(B * 10 + T)
    dk, dv = 8, 5
    x, pool, slots = _gdn_case(B, T, hk, hv, dk, dv, 2 * B + 1, gen)
    parents = random_parents(B, T, gen) if tree else None
    before = pool.clone()
    inter = torch.full((B, T, hv, dk, dv), float("nan"), dtype=F64)
    o = gdn_verify_ref(**x, ssm_states=pool, state_indices=slots, intermediate_states=inter,
                       parents=parents)
    assert torch.equal(pool, before)
    for b in range(B):
        for t in range(T):
            work = before.clone()
            for s in root_path(parents, b, t):
                want = fused_recurrent_gated_delta_rule_ref(
                    *(x[n][b:b + 1, s] for n in ("q", "k", "v", "g", "beta")),
                    ssm_states=work, state_indices=slots[b:b + 1])
            assert maxdiff(o[b, t], want[0]) < TIGHT
            assert maxdiff(inter[b, t], work[slots[b]]) < TIGHT


def _conv_case(B, T, C, K, slots, gen):
    x = torch.randn(B, T, C, generator=gen, dtype=F64)
    w = torch.randn(C, K, generator=gen, dtype=F64)
    pool = torch.randn(slots, C, K - 1, generator=gen, dtype=F64)
    return x, w, pool, torch.randperm(slots, generator=gen)[:B]


@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("B,T,C,K", [(1, 1, 3, 4), (3, 5, 6, 4), (2, 7, 5, 2)])
def test_conv_verify_equals_decode_along_root_paths(tree, activation, B, T, C, K):
    gen = torch.Generator().manual_seed(B * 10 + T + K)
    x, w, pool, slots = _conv_case(B, T, C, K, 2 * B + 1, gen)
    parents = random_parents(B, T, gen) if tree else None
    before = pool.clone()
    inter = torch.full((B, T, C, K - 1), float("nan"), dtype=F64)
    y = conv_verify_ref(x, w, conv_states=pool, state_indices=slots, intermediate_states=inter,
                        parents=parents, activation=activation)
    assert torch.equal(pool, before)
    for b in range(B):
        for t in range(T):
            work = before.clone()
            for s in root_path(parents, b, t):
                want = causal_conv1d_update_ref(x[b:b + 1, s], w, conv_states=work,
                                                state_indices=slots[b:b + 1],
                                                activation=activation)
            assert maxdiff(y[b, t], want[0]) < TIGHT
            assert torch.equal(inter[b, t], work[slots[b]])  # a copy of inputs: exact


def test_chain_parents_equal_no_parents():
    gen = torch.Generator().manual_seed(5)
    B, T = 3, 4
    x, pool, slots = _gdn_case(B, T, 2, 4, 8, 8, 4, gen)
    chain = (torch.arange(T) - 1).repeat(B, 1).int()
    runs = []
    for parents in (None, chain):
        inter = torch.empty(B, T, 4, 8, 8, dtype=F64)
        runs.append((gdn_verify_ref(**x, ssm_states=pool, state_indices=slots,
                                    intermediate_states=inter, parents=parents), inter))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_low_precision_intermediates_and_pool():
    """A bf16 pool and bf16 intermediates: states carried in float32, stored rounded."""
    gen = torch.Generator().manual_seed(6)
    x, pool, slots = _gdn_case(2, 3, 1, 2, 8, 8, 3, gen)
    x = {n: t.float() for n, t in x.items()}
    x["v"] = x["v"].bfloat16()
    pool16 = pool.bfloat16()
    inter = torch.empty(2, 3, 2, 8, 8, dtype=torch.bfloat16)
    o = gdn_verify_ref(**x, ssm_states=pool16, state_indices=slots, intermediate_states=inter)
    inter32 = torch.empty(2, 3, 2, 8, 8)
    o32 = gdn_verify_ref(**{**x, "v": x["v"].float()}, ssm_states=pool16.float(),
                         state_indices=slots, intermediate_states=inter32)
    assert o.dtype == torch.bfloat16
    assert torch.equal(inter, inter32.bfloat16())
    assert maxdiff(o, o32) < 2e-2


@pytest.mark.parametrize("bad", [[[0, 0, 1]], [[-1, 1, 0]], [[-1, 0, -2]], [[-1, 0]]])
def test_bad_parents_rejected(bad):
    with pytest.raises(ValueError, match="parents"):
        verify_parents(torch.tensor(bad), 1, 3, torch.device("cpu"))


def test_shapes_rejected():
    gen = torch.Generator().manual_seed(7)
    x, w, pool, slots = _conv_case(2, 3, 4, 4, 3, gen)
    with pytest.raises(ValueError, match="intermediate_states"):
        conv_verify_ref(x, w, conv_states=pool, state_indices=slots,
                        intermediate_states=torch.empty(2, 3, 4, 4, dtype=F64))
    with pytest.raises(ValueError, match="state_indices"):
        conv_verify_ref(x, w, conv_states=pool, state_indices=slots[:1],
                        intermediate_states=torch.empty(2, 3, 4, 3, dtype=F64))
