"""The Triton verify kernels (speculative decoding over recurrent state) against their torch
references: chains and random trees, T = 1, 2, 4, 7, odd batches, grouped heads (32:16, TP4's
8:4, 6:3), fp32/bf16 operands and states; outputs and intermediates poisoned with NaN first,
the pool bit-identical afterwards. Under TRITON_INTERPRET=1 a small fp32 subset runs on CPU."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS, ON_GPU  # noqa: E402

pytestmark = KERNEL_MARKS

from qnext.kernels import gdn_gating_ref  # noqa: E402
from qnext.kernels.verify_ref import conv_verify_ref, gdn_verify_ref  # noqa: E402
from tests.unit.kernels.helpers import rel_err  # noqa: E402

F32, BF16 = torch.float32, torch.bfloat16
# (B, T, Hk, Hv, dk, dv)
GDN_SHAPES = [(1, 4, 3, 6, 64, 64), (5, 2, 1, 2, 64, 64), (2, 7, 1, 2, 128, 128),
              (3, 1, 2, 4, 64, 96)]
GDN_DTYPES = [(F32, F32, F32, 1e-3)]  # operands, pool, intermediates, tolerance
CONV_SHAPES = [(1, 4, 100, 4), (5, 7, 64, 4), (3, 2, 40, 3)]  # (B, T, C, K)
CONV_DTYPES = [(F32, 1e-5)]
if ON_GPU:
    GDN_SHAPES += [(B, T, hk, hv, d, d) for B, T, hk, hv, d in (
        (1, 1, 16, 32, 128), (1, 1, 3, 6, 64), (1, 2, 4, 8, 64), (5, 4, 16, 32, 128),
        (5, 4, 4, 8, 64), (5, 4, 3, 6, 128), (5, 7, 16, 32, 64), (33, 7, 16, 32, 128),
        (33, 7, 4, 8, 128), (33, 7, 3, 6, 64), (33, 2, 16, 32, 64), (33, 2, 4, 8, 128))]
    GDN_DTYPES += [(BF16, F32, F32, 1e-2), (BF16, BF16, BF16, 1e-2), (F32, F32, BF16, 1e-2)]
    CONV_SHAPES += [(1, 4, 8192, 4), (33, 7, 2048, 4), (5, 1, 2048, 4), (33, 2, 100, 3)]
    CONV_DTYPES += [(BF16, 1e-2)]


def _randn(gen, *shape, dtype=F32):
    return torch.randn(*shape, generator=gen, device=DEVICE).to(dtype)


def _parents(B, T, gen, tree):
    """Random valid trees (parents[b, t] uniform in [-1, t)) or None for chains."""
    if not tree:
        return None
    steps = torch.arange(T, device=DEVICE)
    u = torch.rand(B, T, generator=gen, device=DEVICE)
    return ((u * (steps + 1)).floor().long() - 1).to(torch.int32)


def _slots(B, S, gen):
    """B distinct slots among 1..S-1 (slot 0 stays unused)."""
    return torch.randperm(S - 1, generator=gen, device=DEVICE)[:B] + 1


def _gdn_inputs(B, T, hk, hv, dk, dv, dtype, gen):
    r = lambda *shape, dt=dtype: _randn(gen, *shape, dtype=dt)  # noqa: E731
    return dict(q=r(B, T, hk, dk), k=r(B, T, hk, dk), v=r(B, T, hv, dv), a=r(B, T, hv),
                b=r(B, T, hv), dt_bias=r(hv, dt=F32),
                A_log=torch.log(torch.rand(hv, generator=gen, device=DEVICE) * 0.9 + 0.1))


@pytest.mark.parametrize("B,T,hk,hv,dk,dv", GDN_SHAPES)
@pytest.mark.parametrize("dtype,pool_dtype,inter_dtype,tol", GDN_DTYPES)
@pytest.mark.parametrize("tree", [False, True])
def test_gdn_verify_matches_reference(B, T, hk, hv, dk, dv, dtype, pool_dtype, inter_dtype,
                                      tol, tree):
    from qnext.kernels.gdn_verify import gdn_verify

    gen = torch.Generator(device=DEVICE).manual_seed(B * 100 + T * 10 + hv)
    x = _gdn_inputs(B, T, hk, hv, dk, dv, dtype, gen)
    pool = _randn(gen, 2 * B + 1, hv, dk, dv, dtype=pool_dtype) * 0.5
    slots, parents = _slots(B, 2 * B + 1, gen), _parents(B, T, gen, tree)
    before = pool.clone()
    g, beta = gdn_gating_ref(x["A_log"], x["a"], x["b"], x["dt_bias"])
    want_inter = torch.empty(B, T, hv, dk, dv, dtype=inter_dtype, device=DEVICE)
    want = gdn_verify_ref(x["q"], x["k"], x["v"], g, beta, ssm_states=pool,
                          state_indices=slots, intermediate_states=want_inter, parents=parents)
    inter = torch.full_like(want_inter, float("nan"))
    got = gdn_verify(**x, ssm_states=pool, state_indices=slots, intermediate_states=inter,
                     parents=parents)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert not torch.isnan(got).any() and not torch.isnan(inter).any()
    assert rel_err(got, want) <= tol
    assert rel_err(inter, want_inter) <= tol
    assert torch.equal(pool, before)


def test_gdn_verify_tree_of_chain_parents_equals_chain():
    """Explicit chain parents (t - 1) reproduce the chain mode bit for bit; a strided view of
    a larger intermediate buffer is written only inside the view."""
    from qnext.kernels.gdn_verify import gdn_verify

    gen = torch.Generator(device=DEVICE).manual_seed(3)
    B, T, hk, hv, d = 2, 3, 1, 2, 64
    x = _gdn_inputs(B, T, hk, hv, d, d, F32, gen)
    pool, slots = _randn(gen, 4, hv, d, d), _slots(B, 4, gen)
    chain = (torch.arange(T, device=DEVICE) - 1).repeat(B, 1)
    big = torch.full((B + 1, T + 2, hv, d, d), float("nan"), device=DEVICE)
    runs = []
    for parents, inter in ((None, torch.empty_like(big[:B, :T])), (chain, big[:B, :T])):
        runs.append((gdn_verify(**x, ssm_states=pool, state_indices=slots,
                                intermediate_states=inter, parents=parents), inter))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert torch.isnan(big[B:]).all() and torch.isnan(big[:, T:]).all()


@pytest.mark.parametrize("B,T,C,K", CONV_SHAPES)
@pytest.mark.parametrize("dtype,tol", CONV_DTYPES)
@pytest.mark.parametrize("tree", [False, True])
def test_conv_verify_matches_reference(B, T, C, K, dtype, tol, tree):
    from qnext.kernels.conv_verify import conv_verify

    gen = torch.Generator(device=DEVICE).manual_seed(B * 100 + T * 10 + K)
    wide = _randn(gen, B, T, C + 7, dtype=dtype)  # rows strided like a slice of a projection
    x, w = wide[:, :, 3:3 + C], _randn(gen, C, K, dtype=dtype)
    pool = _randn(gen, 2 * B + 1, C, K - 1, dtype=dtype)
    slots, parents = _slots(B, 2 * B + 1, gen), _parents(B, T, gen, tree)
    before = pool.clone()
    want_inter = torch.empty(B, T, C, K - 1, dtype=dtype, device=DEVICE)
    want = conv_verify_ref(x, w, conv_states=pool, state_indices=slots,
                           intermediate_states=want_inter, parents=parents)
    inter = torch.full_like(want_inter, float("nan"))
    got = conv_verify(x, w, conv_states=pool, state_indices=slots, intermediate_states=inter,
                      parents=parents)
    assert not torch.isnan(got).any() and rel_err(got, want) <= tol
    assert torch.equal(inter, want_inter)  # copies of inputs: exact
    assert torch.equal(pool, before)


def test_launchers_reject_bad_shapes():
    from qnext.kernels.conv_verify import conv_verify
    from qnext.kernels.gdn_verify import gdn_verify

    gen = torch.Generator(device=DEVICE).manual_seed(0)
    B, T, hv, d = 2, 3, 4, 64
    x = _gdn_inputs(B, T, 2, hv, d, d, F32, gen)
    pool, slots = _randn(gen, 4, hv, d, d), _slots(B, 4, gen)
    inter = torch.empty(B, T, hv, d, d, device=DEVICE)
    with pytest.raises(ValueError, match="intermediate_states"):
        gdn_verify(**x, ssm_states=pool, state_indices=slots, intermediate_states=inter[:, :2])
    with pytest.raises(ValueError, match="ssm_states"):
        gdn_verify(**x, ssm_states=pool.transpose(2, 3), state_indices=slots,
                   intermediate_states=inter)
    with pytest.raises(ValueError, match="parents"):
        gdn_verify(**x, ssm_states=pool, state_indices=slots, intermediate_states=inter,
                   parents=torch.zeros(B, T + 1, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="multiple"):
        gdn_verify(**{**x, "q": x["q"][:, :, :1].expand(B, T, 3, d).contiguous(),
                      "k": x["k"][:, :, :1].expand(B, T, 3, d).contiguous()},
                   ssm_states=pool, state_indices=slots, intermediate_states=inter)
    big = 65536  # one past the grid's z limit, where the sequences go
    with pytest.raises(ValueError, match="split it"):
        gdn_verify(**_gdn_inputs(big, 1, 1, 1, 2, 2, F32, gen), ssm_states=pool[:, :1, :2, :2],
                   state_indices=torch.zeros(big, dtype=torch.long, device=DEVICE),
                   intermediate_states=torch.empty(big, 1, 1, 2, 2, device=DEVICE))
    xc, w = _randn(gen, B, T, 16), _randn(gen, 16, 4)
    states = _randn(gen, 4, 16, 3)
    with pytest.raises(ValueError, match="intermediate_states"):
        conv_verify(xc, w, conv_states=states, state_indices=slots,
                    intermediate_states=torch.empty(B, T, 16, 4, device=DEVICE))
    with pytest.raises(ValueError, match="conv_states"):
        conv_verify(xc, w, conv_states=states.transpose(1, 2).contiguous(),
                    state_indices=slots, intermediate_states=torch.empty(B, T, 16, 3,
                                                                          device=DEVICE))
