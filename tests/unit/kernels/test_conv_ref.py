"""Causal conv1d references (varlen prefill and decode update), incl. transformers oracles."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qnext.kernels import causal_conv1d_update_ref, causal_conv1d_varlen_ref
from tests.unit.kernels.helpers import TOL, cu, hf_fn, maxdiff


def _conv_direct(window: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """window [C, K-1+L] -> silu(conv) [C, L] via F.conv1d without padding."""
    return F.silu(F.conv1d(window[None], weight[:, None, :], groups=weight.shape[0])[0])


def test_conv_varlen_matches_conv1d_per_sequence():
    torch.manual_seed(8)
    C, KS = 6, 4
    lengths = [1, 2, 5, 9, 3]
    has_init = torch.tensor([True, True, False, True, False])
    slots = torch.tensor([5, 0, 3, 1, 6])
    x = torch.randn(sum(lengths), C)
    w = torch.randn(C, KS)
    pool = torch.randn(7, C, KS - 1)
    before = pool.clone()
    y = causal_conv1d_varlen_ref(
        x,
        w,
        cu_seqlens=cu(lengths),
        conv_states=pool,
        state_indices=slots,
        has_initial_state=has_init,
    )
    s = 0
    for n, slot, h in zip(lengths, slots.tolist(), has_init.tolist(), strict=True):
        init = before[slot] if h else torch.zeros(C, KS - 1)
        window = torch.cat([init, x[s : s + n].t()], dim=1)
        assert maxdiff(y[s : s + n], _conv_direct(window, w).t()) < TOL
        assert torch.equal(
            pool[slot], window[:, -(KS - 1) :]
        )  # short sequences keep old state columns
        s += n
    assert torch.equal(pool[[2, 4]], before[[2, 4]])
    y_lin = causal_conv1d_varlen_ref(
        x,
        w,
        cu_seqlens=cu(lengths),
        conv_states=before.clone(),
        state_indices=slots,
        has_initial_state=has_init,
        activation=None,
    )
    assert maxdiff(F.silu(y_lin), y) < TOL


def test_conv_split_prefill_and_decode_equal_whole():
    torch.manual_seed(9)
    C, KS, n = 5, 4, 11
    x = torch.randn(n, C)
    w = torch.randn(C, KS)
    one = torch.tensor([0])
    no, yes = torch.tensor([False]), torch.tensor([True])
    pool_whole = torch.zeros(1, C, KS - 1)
    y_whole = causal_conv1d_varlen_ref(
        x, w, cu_seqlens=cu([n]), conv_states=pool_whole, state_indices=one, has_initial_state=no
    )
    for cut in (2, 6):  # a prefix shorter and longer than K-1
        pool = torch.zeros(1, C, KS - 1)
        y1 = causal_conv1d_varlen_ref(
            x[:cut],
            w,
            cu_seqlens=cu([cut]),
            conv_states=pool,
            state_indices=one,
            has_initial_state=no,
        )
        y2 = causal_conv1d_varlen_ref(
            x[cut:],
            w,
            cu_seqlens=cu([n - cut]),
            conv_states=pool,
            state_indices=one,
            has_initial_state=yes,
        )
        assert maxdiff(torch.cat([y1, y2]), y_whole) < TOL
        assert torch.equal(pool, pool_whole)
    pool = torch.zeros(2, C, KS - 1)
    slot = torch.tensor([1])
    steps = [
        causal_conv1d_update_ref(x[t : t + 1], w, conv_states=pool, state_indices=slot)
        for t in range(n)
    ]
    assert maxdiff(torch.cat(steps), y_whole) < TOL
    assert torch.equal(pool[1], pool_whole[0]) and pool[0].abs().sum() == 0


def test_conv_against_transformers():
    torch.manual_seed(10)
    B, C, KS, L = 2, 6, 4, 13
    x = torch.randn(B, C, L)
    w = torch.randn(C, KS)
    hf_y = hf_fn("causal_conv1d_fn")(x, w, None, activation="silu")
    pool = torch.zeros(B, C, KS - 1)
    y = causal_conv1d_varlen_ref(
        x.transpose(1, 2).reshape(B * L, C),
        w,
        cu_seqlens=cu([L] * B),
        conv_states=pool,
        state_indices=torch.arange(B),
        has_initial_state=torch.zeros(B, dtype=torch.bool),
    )
    assert maxdiff(y.view(B, L, C).transpose(1, 2), hf_y) < TOL
    hf_state = pool.clone()
    xt = torch.randn(B, C)
    hf_u = hf_fn("causal_conv1d_update")(xt[:, :, None], hf_state, w, None, "silu")
    u = causal_conv1d_update_ref(xt, w, conv_states=pool, state_indices=torch.arange(B))
    assert maxdiff(u, hf_u[:, :, 0]) < TOL
    assert torch.equal(pool, hf_state)
