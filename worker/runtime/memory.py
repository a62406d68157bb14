"""Sizes the pools of one rank: measures the memory left for them (the GPU's, or the CPU budget
that stands in for it) and turns it into a `MemoryPlan` with the pure arithmetic of
`sched.memory`. Every rank plans from the minimum over ranks, so all agree.
"""

from __future__ import annotations

import torch
from torch import nn

from qnext.worker.config import Config
from qnext.worker.layers.parallel import get_tp_info
from qnext.worker.sched.memory import (
    MemoryPlan,
    kv_bytes_per_token,
    plan_memory,
    reserve_spec_states,
    slots_per_request,
    state_bytes_per_slot,
)

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def device_memory_bytes(cfg: Config) -> int:
    """What the static pools and weights may use in total, before the fraction."""
    device = torch.device(cfg.load.device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return cfg.cache.cpu_memory_bytes


def pool_unit_bytes(cfg: Config) -> tuple[int, int]:
    """(KV bytes per token, state bytes per slot) on this rank."""
    m, tp_size = cfg.model, get_tp_info().size
    dtype_bytes = _BYTES[cfg.load.dtype]
    ssm_bytes = 8 if cfg.load.dtype == "float64" else _BYTES[cfg.cache.mamba_ssm_dtype]
    draft_layers = 1 if cfg.spec.enabled else 0  # the MTP head's attention layer
    kv = kv_bytes_per_token(len(m.full_layer_ids) + draft_layers, m.num_key_value_heads,
                            m.head_dim, dtype_bytes, tp_size)
    state = state_bytes_per_slot(len(m.linear_layer_ids), m.conv_dim, m.linear_conv_kernel_dim,
                                 m.linear_num_value_heads, m.linear_key_head_dim,
                                 m.linear_value_head_dim, dtype_bytes, ssm_bytes, tp_size)
    return kv, state


def make_memory_plan(cfg: Config, model: nn.Module, strategy: str = "off",
                     overlap: bool = False) -> MemoryPlan:
    available = int(device_memory_bytes(cfg) * cfg.cache.mem_fraction_static)
    available = get_tp_info().comm.all_reduce_min(available - weight_bytes(model))
    kv, state = pool_unit_bytes(cfg)
    spec = cfg.spec.draft_tokens if cfg.spec.enabled else 0
    plan = plan_memory(
        available_bytes=available, kv_bytes_per_token=kv, state_bytes_per_slot=state,
        page_size=cfg.cache.page_size,
        mamba_full_memory_ratio=cfg.cache.mamba_full_memory_ratio,
        max_mamba_cache_size=cfg.cache.max_mamba_cache_size,
        max_running_requests=cfg.sched.max_running_requests,
        max_total_tokens=cfg.cache.max_total_tokens,
        slots_per_request=slots_per_request(strategy, overlap) + spec)
    return reserve_spec_states(plan, spec) if spec else plan
