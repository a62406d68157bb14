"""KV and state pools: shapes per rank, slot 0 / page 0 reserved by convention, zeroing of fresh
slots and copy of slots (copy-on-write of a cached state) across every layer."""

from __future__ import annotations

import torch

from qnext.worker.runtime.kv_pool import KVPool
from qnext.worker.runtime.state_pool import StatePool


def _state_pool(ssm_dtype=torch.float32) -> StatePool:
    pool = StatePool(num_layers=3, num_slots=5, conv_channels=8, conv_kernel=4, num_v_heads=2,
                     head_k_dim=4, head_v_dim=3, conv_dtype=torch.bfloat16, ssm_dtype=ssm_dtype,
                     device="cpu")
    pool.conv_states.normal_()
    pool.ssm_states.normal_()
    return pool


def test_state_pool_shapes_and_bytes():
    pool = _state_pool(torch.bfloat16)
    assert pool.conv(1).shape == (5, 8, 3) and pool.ssm(2).shape == (5, 2, 4, 3)
    assert pool.ssm_states.dtype == torch.bfloat16
    assert pool.bytes_per_slot == 3 * (8 * 3 * 2 + 2 * 4 * 3 * 2)


def test_zero_resets_only_the_given_slots_in_every_layer():
    pool = _state_pool()
    before = pool.ssm_states.clone()
    pool.zero(torch.tensor([1, 3]))
    assert pool.ssm_states[:, [1, 3]].abs().sum() == 0
    assert pool.conv_states[:, [1, 3]].abs().sum() == 0
    assert torch.equal(pool.ssm_states[:, [0, 2, 4]], before[:, [0, 2, 4]])


def test_copy_clones_state_into_other_slots():
    pool = _state_pool()
    pool.copy(torch.tensor([2, 2]), torch.tensor([3, 4]))
    for dst in (3, 4):
        assert torch.equal(pool.ssm_states[:, dst], pool.ssm_states[:, 2])
        assert torch.equal(pool.conv_states[:, dst], pool.conv_states[:, 2])
    pool.ssm_states[:, 3] += 1  # the copy is independent of its source
    assert not torch.equal(pool.ssm_states[:, 3], pool.ssm_states[:, 2])


def test_kv_pool_layout():
    pool = KVPool(num_layers=2, num_pages=6, page_size=4, num_kv_heads=1, head_dim=8,
                  dtype=torch.bfloat16, device="cpu")
    k, v = pool.kv(1)
    assert k.shape == (24, 1, 8) and v.shape == (24, 1, 8)
    assert pool.bytes == 2 * 2 * 24 * 8 * 2
