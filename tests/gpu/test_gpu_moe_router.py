"""The MoE router kernel (`moe_router.route_hidden`: router GEMV and routing in one launch, a
routing program per token polling its logits) against `moe_route` of the router's logits:
Qwen3-Next shapes (512 experts + the shared one, H = 2048) and small odd ones, NaN padding
rows, the polled rows set back between launches, the arguments it refuses; bf16 on the GPU,
fp32 under the interpreter."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS, ON_GPU, generator, poison  # noqa: E402

pytestmark = KERNEL_MARKS

from tests.unit.kernels.helpers import rel_err  # noqa: E402

MAIN = torch.bfloat16 if ON_GPU else torch.float32


def _router(E, H, shared, seed, dtype, pad=5):
    """A router weight: E (+ 1) rows of logits' weights, then `pad` NaN rows never read."""
    weight = torch.full((E + shared + pad, H), float("nan"), device=DEVICE, dtype=dtype)
    weight[:E + shared] = (torch.randn(E + shared, H, generator=generator(seed), device=DEVICE)
                           * H**-0.5).to(dtype)
    return weight


@pytest.mark.parametrize("T,H,E,k,shared", [(1, 2048, 512, 10, True), (3, 2048, 512, 10, True),
                                            (5, 96, 16, 4, True), (11, 64, 7, 3, False)])
def test_router_gemv_and_routing_in_one_launch(T, H, E, k, shared):
    """`route_hidden` (router GEMV + routing, a program per token routes it once its logits
    are in) gives `moe_route` of the router's logits; the router weight's padding rows (NaN)
    are not read. fp32: the same experts; bf16 (logits rounded like the GEMM's output, where
    ties are likely): the same sorted weights, and nearly always the same experts."""
    import torch.nn.functional as F

    from qnext.kernels.moe_route import moe_route
    from qnext.kernels.moe_router import route_hidden

    dtype = MAIN
    x = torch.randn(T, H, generator=generator(T * H + E), device=DEVICE).to(dtype)
    weight = _router(E, H, shared, E, dtype)
    want_w, want_ids = moe_route(F.linear(x, weight[:E + shared]), k, True, shared)
    poison()
    got_w, got_ids = route_hidden(x, weight, E + shared, k, True, shared)
    assert not torch.isnan(got_w).any()
    exact = dtype == torch.float32
    err = rel_err(got_w.sort(dim=1).values, want_w.sort(dim=1).values)
    assert err <= (1e-5 if exact else 2e-2), err
    same = (got_ids == want_ids).float().mean().item()
    assert same >= (1.0 if exact else 0.9), same
    with pytest.raises(ValueError, match="router weight"):
        route_hidden(x, weight[:, :-1], E + shared, k, True, shared)


def test_polled_rows_set_back_between_launches():
    """Launches back to back — more tokens, fewer, then one token whose input is NaN — each
    route their own logits (the routing program waits for them, not for an earlier launch's),
    and after each every word of the polled rows is unset (-1) again; the NaN token's launch
    returns (a NaN logit is never taken for an unset word)."""
    import torch.nn.functional as F

    from qnext.kernels.launch import MAX_COUNTERS, polled_rows
    from qnext.kernels.moe_route import moe_route
    from qnext.kernels.moe_router import route_hidden

    H, E, k = 64, 40, 4
    weight = _router(E, H, True, 3, torch.float32)
    for T, nan_row in ((3, None), (7, None), (2, 1)):
        x = torch.randn(T, H, generator=generator(T), device=DEVICE)
        if nan_row is not None:
            x[nan_row] = float("nan")
        want_w, want_ids = moe_route(F.linear(x, weight[:E + 1]), k, True, True)
        got_w, got_ids = route_hidden(x, weight, E + 1, k, True, True)
        rows = polled_rows(x.device, MAX_COUNTERS, E + 1)
        assert bool((rows == -1).all()), f"{int((rows != -1).sum())} words left set"
        ok = ~torch.isnan(x).any(1)
        assert torch.equal(got_ids[ok], want_ids[ok])
        assert rel_err(got_w[ok], want_w[ok]) <= 1e-5


def test_route_hidden_rejects_what_it_cannot_route():
    """A ValueError that names the limit, before any launch: top_k outside [1, E], more
    routed experts than the routing program holds in registers, more tokens than it has rows."""
    from qnext.kernels.launch import MAX_COUNTERS
    from qnext.kernels.moe_router import MAX_EXPERTS, route_hidden

    x = torch.randn(2, 64, device=DEVICE)
    weight = _router(16, 64, True, 5, torch.float32)
    with pytest.raises(ValueError, match="top_k = 17"):
        route_hidden(x, weight, 17, 17, True, True)
    wide = torch.randn(MAX_EXPERTS + 2, 64, device=DEVICE)
    with pytest.raises(ValueError, match=f"{MAX_EXPERTS + 1} experts"):
        route_hidden(x, wide, MAX_EXPERTS + 2, 4, True, True)
    many = torch.randn(MAX_COUNTERS + 1, 64, device=DEVICE)
    with pytest.raises(ValueError, match=f"{MAX_COUNTERS + 1} tokens"):
        route_hidden(many, weight, 17, 4, True, True)
