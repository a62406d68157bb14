"""Gated delta rule references: chunked, recurrent, decode, gating, and transformers oracles."""

from __future__ import annotations

import pytest
import torch

from qnext.kernels import (
    chunk_gated_delta_rule_ref,
    fused_recurrent_gated_delta_rule_ref,
    gdn_gating_ref,
    l2norm_ref,
    recurrent_gated_delta_rule_ref,
)
from tests.unit.kernels.helpers import TOL, cu, hf_fn, maxdiff


def _gdn_inputs(T: int, hk: int, hv: int, dk: int, dv: int, dtype=torch.float32):
    q = torch.randn(T, hk, dk).to(dtype)
    k = torch.randn(T, hk, dk).to(dtype)
    v = torch.randn(T, hv, dv).to(dtype)
    g, beta = gdn_gating_ref(
        torch.randn(hv) * 0.5, torch.randn(T, hv), torch.randn(T, hv), torch.randn(hv)
    )
    return q, k, v, g, beta


def test_gdn_gating_and_l2norm_formulas():
    torch.manual_seed(0)
    hv = 4
    A_log, dt_bias = torch.randn(hv), torch.randn(hv)
    a = torch.randn(6, hv) * 10
    a[0, 0] = 40.0  # above the softplus threshold: softplus(x) == x
    b = torch.randn(6, hv).bfloat16()
    g, beta = gdn_gating_ref(A_log, a.bfloat16(), b, dt_bias)
    assert g.dtype == torch.float32 and beta.dtype == torch.float32
    x = a.bfloat16().float() + dt_bias
    expect_g = -A_log.exp() * torch.log1p(torch.exp(x))
    assert maxdiff(g, expect_g) < 1e-4
    assert (g <= 0).all()
    assert maxdiff(beta, 1 / (1 + torch.exp(-b.float()))) < 1e-6
    y = torch.randn(3, 5, 16)
    expect = y / torch.sqrt((y * y).sum(-1, keepdim=True) + 1e-6)
    assert maxdiff(l2norm_ref(y), expect) < 1e-6
    assert l2norm_ref(y.bfloat16()).dtype == torch.float32


def _token_loop_batch(q, k, v, g, beta, lengths, init_states):
    """Token-loop ref per sequence; init_states [B, Hv, dk, dv] or None entries."""
    outs, finals, s = [], [], 0
    for n, init in zip(lengths, init_states, strict=True):
        o, st = recurrent_gated_delta_rule_ref(
            q[s : s + n], k[s : s + n], v[s : s + n], g[s : s + n], beta[s : s + n], init
        )
        outs.append(o)
        finals.append(st)
        s += n
    return torch.cat(outs), finals


@pytest.mark.parametrize("hk,hv", [(2, 4), (4, 4)])
@pytest.mark.parametrize("chunk_size", [64, 16])
def test_chunked_matches_token_loop(hk, hv, chunk_size):
    torch.manual_seed(1)
    dk, dv = 16, 8
    lengths = [1, 5, 63, 64, 65, 130]
    has_init = torch.tensor([True, False, True, False, True, True])
    slots = torch.tensor([7, 2, 0, 9, 4, 5], dtype=torch.int64)
    q, k, v, g, beta = _gdn_inputs(sum(lengths), hk, hv, dk, dv)
    pool = torch.randn(10, hv, dk, dv) * 0.3
    before = pool.clone()
    inits = [
        before[s] if h else None for s, h in zip(slots.tolist(), has_init.tolist(), strict=True)
    ]
    expect_o, expect_states = _token_loop_batch(q, k, v, g, beta, lengths, inits)
    o = chunk_gated_delta_rule_ref(
        q, k, v, g, beta,
        cu_seqlens=cu(lengths), ssm_states=pool,
        state_indices=slots, has_initial_state=has_init,
        chunk_size=chunk_size,
    )
    assert o.shape == v.shape and o.dtype == v.dtype
    assert maxdiff(o, expect_o) < TOL
    for slot, st in zip(slots.tolist(), expect_states, strict=True):
        assert maxdiff(pool[slot], st) < TOL
    untouched = [i for i in range(10) if i not in slots.tolist()]
    assert torch.equal(pool[untouched], before[untouched])


def test_chunked_bf16_pool_and_inputs():
    torch.manual_seed(2)
    hk, hv, dk, dv = 2, 4, 16, 8
    lengths = [20, 70]
    q, k, v, g, beta = _gdn_inputs(sum(lengths), hk, hv, dk, dv, dtype=torch.bfloat16)
    pool = (torch.randn(4, hv, dk, dv) * 0.3).bfloat16()
    before = pool.clone()
    slots = torch.tensor([3, 1])
    has_init = torch.tensor([True, False])
    inits = [before[3].float(), None]
    expect_o, expect_states = _token_loop_batch(q, k, v, g, beta, lengths, inits)
    o = chunk_gated_delta_rule_ref(
        q, k, v, g, beta,
        cu_seqlens=cu(lengths), ssm_states=pool,
        state_indices=slots, has_initial_state=has_init,
    )
    assert pool.dtype == torch.bfloat16 and o.dtype == torch.bfloat16
    assert maxdiff(o, expect_o) < 2e-2
    for slot, st in zip([3, 1], expect_states, strict=True):
        assert maxdiff(pool[slot], st.bfloat16()) < 1e-2
        assert not torch.equal(pool[slot], before[slot])
    assert torch.equal(pool[[0, 2]], before[[0, 2]])


def test_chunked_split_calls_equal_one_call():
    torch.manual_seed(3)
    hk, hv, dk, dv, n, cut = 2, 4, 16, 8, 150, 37
    q, k, v, g, beta = _gdn_inputs(n, hk, hv, dk, dv)
    pool_a = torch.zeros(3, hv, dk, dv)
    pool_b = torch.zeros(3, hv, dk, dv)
    slot = torch.tensor([1])
    common = dict(state_indices=slot, chunk_size=64)
    o_whole = chunk_gated_delta_rule_ref(
        q, k, v, g, beta,
        cu_seqlens=cu([n]),
        ssm_states=pool_a,
        has_initial_state=torch.tensor([False]),
        **common,
    )
    parts = []
    for (s, e), init in (((0, cut), False), ((cut, n), True)):
        parts.append(
            chunk_gated_delta_rule_ref(
                q[s:e], k[s:e], v[s:e], g[s:e], beta[s:e],
                cu_seqlens=cu([e - s]),
                ssm_states=pool_b,
                has_initial_state=torch.tensor([init]),
                **common,
            )
        )
    assert maxdiff(torch.cat(parts), o_whole) < TOL
    assert maxdiff(pool_a, pool_b) < TOL
    assert pool_a[1].abs().sum() > 0


def test_chunked_skips_empty_sequence():
    torch.manual_seed(4)
    q, k, v, g, beta = _gdn_inputs(6, 2, 2, 8, 8)
    pool = torch.randn(3, 2, 8, 8)
    before = pool.clone()
    o = chunk_gated_delta_rule_ref(
        q, k, v, g, beta,
        cu_seqlens=cu([0, 6]), ssm_states=pool,
        state_indices=torch.tensor([0, 2]), has_initial_state=torch.tensor([True, True]),
    )
    assert torch.equal(pool[0], before[0]) and not torch.equal(pool[2], before[2])
    expect, _ = recurrent_gated_delta_rule_ref(q, k, v, g, beta, before[2])
    assert maxdiff(o, expect) < TOL


def test_decode_matches_token_loop():
    torch.manual_seed(5)
    hk, hv, dk, dv, B, steps = 2, 4, 16, 8, 3, 9
    q, k, v, g, beta = _gdn_inputs(B * steps, hk, hv, dk, dv)
    q, k, v = (x.view(steps, B, *x.shape[1:]) for x in (q, k, v))
    g, beta = g.view(steps, B, hv), beta.view(steps, B, hv)
    pool = torch.randn(6, hv, dk, dv) * 0.3
    before = pool.clone()
    slots = torch.tensor([4, 0, 2])
    outs = [
        fused_recurrent_gated_delta_rule_ref(
            q[t], k[t], v[t], g[t], beta[t], ssm_states=pool, state_indices=slots
        )
        for t in range(steps)
    ]
    outs = torch.stack(outs)  # [steps, B, Hv, dv]
    for b, slot in enumerate(slots.tolist()):
        o, st = recurrent_gated_delta_rule_ref(
            q[:, b], k[:, b], v[:, b], g[:, b], beta[:, b], before[slot]
        )
        assert maxdiff(outs[:, b], o) < TOL
        assert maxdiff(pool[slot], st) < TOL
    assert torch.equal(pool[[1, 3, 5]], before[[1, 3, 5]])


def test_decode_bf16_pool():
    torch.manual_seed(6)
    q, k, v, g, beta = _gdn_inputs(2, 1, 2, 8, 4)
    pool = torch.randn(3, 2, 8, 4).bfloat16()
    before = pool.clone()
    o = fused_recurrent_gated_delta_rule_ref(
        q, k, v, g, beta, ssm_states=pool, state_indices=torch.tensor([2, 0])
    )
    assert pool.dtype == torch.bfloat16 and torch.equal(pool[1], before[1])
    o_ref, st = recurrent_gated_delta_rule_ref(
        q[:1], k[:1], v[:1], g[:1], beta[:1], before[2].float()
    )
    assert maxdiff(o[0], o_ref[0]) < TOL
    assert maxdiff(pool[2], st.bfloat16()) < 1e-2


@pytest.mark.parametrize("hk,hv", [(2, 4), (4, 4)])
def test_gdn_against_transformers(hk, hv):
    torch.manual_seed(7)
    dk, dv, Bn, L = 16, 8, 2, 77
    q, k, v, g, beta = _gdn_inputs(Bn * L, hk, hv, dk, dv)
    init = torch.randn(Bn, hv, dk, dv) * 0.3
    batched = [x.view(Bn, L, *x.shape[1:]) for x in (q, k, v, g, beta)]
    hf_o, hf_s = hf_fn("torch_chunk_gated_delta_rule")(
        *batched,
        chunk_size=64,
        initial_state=init.clone(),
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )
    hf_ro, hf_rs = hf_fn("torch_recurrent_gated_delta_rule")(
        *batched, initial_state=init.clone(), output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    pool = init.clone()
    o = chunk_gated_delta_rule_ref(
        q, k, v, g, beta,
        cu_seqlens=cu([L] * Bn), ssm_states=pool,
        state_indices=torch.arange(Bn), has_initial_state=torch.ones(Bn, dtype=torch.bool),
    )
    assert maxdiff(o.view(Bn, L, hv, dv), hf_o) < TOL
    assert maxdiff(pool, hf_s) < TOL
    for b in range(Bn):
        sl = slice(b * L, (b + 1) * L)
        ro, rs = recurrent_gated_delta_rule_ref(q[sl], k[sl], v[sl], g[sl], beta[sl], init[b])
        assert maxdiff(ro, hf_ro[b]) < TOL
        assert maxdiff(rs, hf_rs[b]) < TOL
