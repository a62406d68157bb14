"""Memory plan arithmetic: Qwen3-Next-80B-A3B pool sizes, the state/KV ratio split, the
overrides and caps, page rounding, reserved-id accounting and each failure's flag hint."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnext.worker.sched.memory import (
    MemoryPlan,
    MemoryPlanError,
    kv_bytes_per_token,
    plan_memory,
    reserve_spec_states,
    slots_per_request,
    state_bytes_per_slot,
)

# Qwen3-Next-80B-A3B: 36 GDN layers (conv 8192 x K=4, 32 v-heads of 128x128), 12 full layers
# (2 KV heads of 256); bf16 conv state and KV, fp32 SSM state.
GDN = dict(num_linear_layers=36, conv_channels=8192, conv_kernel=4, num_v_heads=32,
           head_k_dim=128, head_v_dim=128, conv_dtype_bytes=2, ssm_dtype_bytes=4)
STATE_TP1 = 77_266_944

# H100 SXM (81,559 MiB), --mem-fraction-static 0.88, 80B bf16 weights at tp=4 (~40 GB a rank).
H100_AVAILABLE = int(81_559 * 2**20 * 0.88) - 40 * 10**9
STATE_TP4 = state_bytes_per_slot(**GDN, tp_size=4)
KV_TP4 = kv_bytes_per_token(12, 2, 256, 2, tp_size=4)


def _plan(**kwargs) -> MemoryPlan:
    args = dict(available_bytes=H100_AVAILABLE, kv_bytes_per_token=KV_TP4,
                state_bytes_per_slot=STATE_TP4, page_size=1)
    return plan_memory(**{**args, **kwargs})


def _usable(available: int = H100_AVAILABLE, page_size: int = 1) -> int:
    """Bytes left after the reserved state slot 0 and KV page 0."""
    return available - STATE_TP4 - page_size * KV_TP4


def test_state_bytes_80b():
    assert state_bytes_per_slot(**GDN, tp_size=1) == STATE_TP1
    assert STATE_TP4 * 4 == STATE_TP1
    one_layer = {**GDN, "num_linear_layers": 1}
    assert state_bytes_per_slot(**one_layer, tp_size=1) == 2_146_304
    bf16_ssm = {**GDN, "ssm_dtype_bytes": 2}
    assert round(state_bytes_per_slot(**bf16_ssm, tp_size=1) / 2**20, 1) == 37.7


def test_state_bytes_needs_divisible_tp():
    with pytest.raises(ValueError, match="tp_size 3"):
        state_bytes_per_slot(**GDN, tp_size=3)


@pytest.mark.parametrize("tp_size, expected", [(1, 24_576), (2, 12_288), (4, 12_288),
                                               (8, 12_288)])
def test_kv_bytes_80b(tp_size, expected):
    # NOTE: beyond tp=2 the 2 KV heads are replicated (one per rank), so the per-rank size
    # stays at 12 KiB (12,288 B) rather than halving again.
    assert kv_bytes_per_token(12, 2, 256, 2, tp_size) == expected


def test_kv_bytes_rejects_uneven_split():
    with pytest.raises(ValueError):
        kv_bytes_per_token(12, 4, 256, 2, tp_size=3)
    with pytest.raises(ValueError):
        kv_bytes_per_token(12, 2, 256, 2, tp_size=3)


@pytest.mark.parametrize("strategy, overlap, expected", [
    ("off", False, 1), ("off", True, 1), ("no_buffer", False, 3), ("no_buffer", True, 3),
    ("extra_buffer", False, 4), ("extra_buffer", True, 5)])
def test_slots_per_request(strategy, overlap, expected):
    assert slots_per_request(strategy, overlap) == expected


def test_slots_per_request_unknown_strategy_names_allowed_values():
    with pytest.raises(ValueError, match="no_buffer.*extra_buffer"):
        slots_per_request("lazy", False)


def test_h100_tp4_default_plan():
    plan = _plan(slots_per_request=slots_per_request("no_buffer", False))
    slots = plan.num_state_slots - 1
    assert 800 < slots < 900
    assert plan.max_running_requests == slots // 3
    assert 1_400_000 < plan.max_total_tokens < 1_600_000
    assert plan.max_total_tokens == (_usable() - slots * STATE_TP4) // KV_TP4
    assert plan.kv_pool_bytes + plan.state_pool_bytes <= H100_AVAILABLE


def test_speculation_reserves_draft_states_per_running_request():
    """NEXTN with 4 draft tokens: each running request also holds 4 verify states; the pool
    keeps what the strategy needs, and the memory total does not grow."""
    base = _plan(slots_per_request=3)
    plan = reserve_spec_states(_plan(slots_per_request=3 + 4), 4)
    assert plan.max_running_requests < base.max_running_requests
    assert plan.num_state_slots - 1 >= 3 * plan.max_running_requests
    assert plan.spec_state_bytes == plan.max_running_requests * 4 * STATE_TP4
    assert plan.describe()["total_pool_bytes"] == base.kv_pool_bytes + base.state_pool_bytes
    with pytest.raises(MemoryPlanError, match="--speculative-num-draft-tokens"):
        reserve_spec_states(_plan(max_mamba_cache_size=8, slots_per_request=8), 8)


@pytest.mark.parametrize("ratio", [0.5, 0.9, 1.0, 2.0])
def test_ratio_split_within_one_slot(ratio):
    plan = _plan(mamba_full_memory_ratio=ratio)
    budget = _usable() * Fraction(ratio) / (1 + Fraction(ratio))
    state_bytes = (plan.num_state_slots - 1) * STATE_TP4
    assert budget - STATE_TP4 < state_bytes <= budget


def test_default_ratio_gives_states_about_47_percent():
    plan = _plan()
    share = plan.state_pool_bytes / H100_AVAILABLE
    assert abs(share - 0.9 / 1.9) < STATE_TP4 / H100_AVAILABLE + 1e-3


def test_max_mamba_cache_size_overrides_ratio():
    for ratio in (0.1, 0.9, 5.0):
        plan = _plan(max_mamba_cache_size=100, mamba_full_memory_ratio=ratio)
        assert plan.num_state_slots == 101
        assert plan.max_total_tokens == (_usable() - 100 * STATE_TP4) // KV_TP4


def test_max_running_requests_fixes_slots_only_without_prefix_cache():
    plain = _plan(max_running_requests=100, slots_per_request=1)
    assert (plain.num_state_slots, plain.max_running_requests) == (101, 100)
    ratio_slots = _plan(slots_per_request=3).num_state_slots
    cached = _plan(max_running_requests=100, slots_per_request=3)
    assert cached.num_state_slots == ratio_slots
    assert cached.max_running_requests == 100


@pytest.mark.parametrize("k, expected", [(1, 100), (3, 33), (4, 25), (5, 20)])
def test_slot_cap_on_running_requests(k, expected):
    assert _plan(max_mamba_cache_size=100, slots_per_request=k).max_running_requests == expected
    capped = _plan(max_mamba_cache_size=100, slots_per_request=k, max_running_requests=10)
    assert capped.max_running_requests == 10


@pytest.mark.parametrize("page_size", [1, 16, 64])
def test_max_total_tokens_caps_kv_rounded_to_pages(page_size):
    plan = _plan(page_size=page_size, max_total_tokens=1000)
    assert plan.max_total_tokens == 1000 // page_size * page_size
    assert plan.num_pages == 1000 // page_size + 1
    roomy = _plan(page_size=page_size, max_total_tokens=10**12)
    assert roomy.max_total_tokens == _plan(page_size=page_size).max_total_tokens


@pytest.mark.parametrize("page_size", [1, 16, 64, 256])
def test_kv_rounds_down_to_whole_pages(page_size):
    plan = _plan(page_size=page_size)
    fit = (_usable(page_size=page_size) - (plan.num_state_slots - 1) * STATE_TP4) // KV_TP4
    assert plan.max_total_tokens == fit // page_size * page_size
    assert plan.num_pages == plan.max_total_tokens // page_size + 1
    assert plan.kv_pool_bytes == plan.num_pages * page_size * KV_TP4


def test_reserved_ids_come_out_of_the_budget():
    # available = slot 0 + page 0 (16 tokens) + 5 slots + 77 tokens, exactly.
    available = 1000 + 16 * 10 + 5 * 1000 + 77 * 10
    args = dict(kv_bytes_per_token=10, state_bytes_per_slot=1000, page_size=16,
                max_mamba_cache_size=5)
    plan = plan_memory(available_bytes=available, **args)
    assert (plan.num_state_slots, plan.max_total_tokens, plan.num_pages) == (6, 64, 5)
    assert plan.state_pool_bytes == 6 * 1000
    assert plan.kv_pool_bytes == 5 * 16 * 10
    exact = plan_memory(available_bytes=available - 77 * 10 + 64 * 10, **args)
    assert exact.kv_pool_bytes + exact.state_pool_bytes == available - 77 * 10 + 64 * 10
    with pytest.raises(MemoryPlanError, match="--max-mamba-cache-size"):
        plan_memory(available_bytes=1000 + 160 + 5 * 1000 - 1, **args)


def test_describe_and_frozen():
    plan = _plan()
    info = plan.describe()
    assert {f.name for f in dataclasses.fields(MemoryPlan)} < set(info)
    assert info["total_pool_bytes"] == plan.kv_pool_bytes + plan.state_pool_bytes
    assert all(isinstance(v, int) for v in info.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.num_pages = 3  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, flags", [
    (dict(available_bytes=STATE_TP4), ["--mem-fraction-static", "--mamba-full-memory-ratio",
                                       "--max-mamba-cache-size"]),
    (dict(available_bytes=0), ["--mem-fraction-static"]),
    (dict(mamba_full_memory_ratio=0.0), ["--mamba-full-memory-ratio"]),
    (dict(max_running_requests=0), ["--max-running-requests"]),
    (dict(max_mamba_cache_size=0), ["--max-mamba-cache-size"]),
    (dict(max_mamba_cache_size=10_000), ["--max-mamba-cache-size", "--mem-fraction-static"]),
    (dict(max_running_requests=10_000), ["--max-running-requests", "--mem-fraction-static"]),
    (dict(max_mamba_cache_size=_usable() // STATE_TP4, min_tokens_per_request=4096),
     ["--mem-fraction-static", "--max-mamba-cache-size"]),
    (dict(page_size=16, max_total_tokens=15), ["--max-total-tokens"]),
    (dict(max_total_tokens=100, min_tokens_per_request=200), ["--max-total-tokens"]),
    (dict(max_mamba_cache_size=2, slots_per_request=3), ["--max-mamba-cache-size"]),
])
def test_failures_name_the_flag(kwargs, flags):
    with pytest.raises(MemoryPlanError) as err:
        _plan(**kwargs)
    assert isinstance(err.value, ValueError)
    for flag in flags:
        assert flag in str(err.value)


@settings(max_examples=200, deadline=None)
@given(available=st.integers(0, 10**7), kv=st.integers(1, 500), state=st.integers(1, 10**5),
       page_size=st.sampled_from([1, 16, 64]), ratio=st.sampled_from([0.2, 0.9, 1.0, 3.0]),
       per_request=st.sampled_from([1, 3, 4, 5]), cap=st.none() | st.integers(1, 10**5))
def test_any_plan_fits_its_budget(available, kv, state, page_size, ratio, per_request, cap):
    try:
        plan = plan_memory(available_bytes=available, kv_bytes_per_token=kv,
                           state_bytes_per_slot=state, page_size=page_size,
                           mamba_full_memory_ratio=ratio, slots_per_request=per_request,
                           max_total_tokens=cap)
    except MemoryPlanError:
        return
    assert plan.kv_pool_bytes + plan.state_pool_bytes <= available
    assert plan.max_total_tokens % page_size == 0 and plan.max_total_tokens >= 1
    assert plan.num_pages == plan.max_total_tokens // page_size + 1
    assert 1 <= plan.max_running_requests * per_request <= plan.num_state_slots - 1
    assert cap is None or plan.max_total_tokens <= cap


def test_memory_module_imports_no_torch():
    code = ("import sys, qnext.worker.sched.memory; "
            "assert 'torch' not in sys.modules, 'qnext.worker.sched.memory imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
