"""Random Qwen3-Next weights under the real checkpoint tensor names (`tensor_specs`,
`random_state_dict`); initialisation keeps activations O(1) and greedy logits free of near-ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from qnext.worker.config import FULL, ModelConfig

#: Tensors kept in float32 whatever the checkpoint dtype (as in the real checkpoint).
FP32_TENSORS = ("A_log",)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One checkpoint tensor: its name, shape and initialiser kind (see `_init_tensor`)."""

    name: str
    shape: tuple[int, ...]
    init: str  # linear | embed | norm | gated_norm | a_log | dt_bias | conv


def _attn_specs(p: str, m: ModelConfig) -> list[TensorSpec]:
    h, d = m.hidden_size, m.head_dim
    q, kv = m.num_attention_heads * d, m.num_key_value_heads * d
    return [
        TensorSpec(f"{p}self_attn.q_proj.weight", (2 * q, h), "linear"),  # per head [q | gate]
        TensorSpec(f"{p}self_attn.k_proj.weight", (kv, h), "linear"),
        TensorSpec(f"{p}self_attn.v_proj.weight", (kv, h), "linear"),
        TensorSpec(f"{p}self_attn.o_proj.weight", (h, q), "linear"),
        TensorSpec(f"{p}self_attn.q_norm.weight", (d,), "norm"),
        TensorSpec(f"{p}self_attn.k_norm.weight", (d,), "norm"),
    ]


def _gdn_specs(p: str, m: ModelConfig) -> list[TensorSpec]:
    h, hv, k = m.hidden_size, m.linear_num_value_heads, m.linear_conv_kernel_dim
    qkvz = 2 * m.linear_key_dim + 2 * m.linear_value_dim
    return [
        TensorSpec(f"{p}linear_attn.in_proj_qkvz.weight", (qkvz, h), "linear"),
        TensorSpec(f"{p}linear_attn.in_proj_ba.weight", (2 * hv, h), "linear"),
        TensorSpec(f"{p}linear_attn.conv1d.weight", (m.conv_dim, 1, k), "conv"),
        TensorSpec(f"{p}linear_attn.A_log", (hv,), "a_log"),
        TensorSpec(f"{p}linear_attn.dt_bias", (hv,), "dt_bias"),
        TensorSpec(f"{p}linear_attn.norm.weight", (m.linear_value_head_dim,), "gated_norm"),
        TensorSpec(f"{p}linear_attn.out_proj.weight", (h, m.linear_value_dim), "linear"),
    ]


def _swiglu_specs(p: str, hidden: int, inter: int) -> list[TensorSpec]:
    return [
        TensorSpec(f"{p}gate_proj.weight", (inter, hidden), "linear"),
        TensorSpec(f"{p}up_proj.weight", (inter, hidden), "linear"),
        TensorSpec(f"{p}down_proj.weight", (hidden, inter), "linear"),
    ]


def _moe_specs(p: str, m: ModelConfig) -> list[TensorSpec]:
    h = m.hidden_size
    specs = [TensorSpec(f"{p}mlp.gate.weight", (m.num_experts, h), "linear")]
    for e in range(m.num_experts):
        specs += _swiglu_specs(f"{p}mlp.experts.{e}.", h, m.moe_intermediate_size)
    specs += _swiglu_specs(f"{p}mlp.shared_expert.", h, m.shared_expert_intermediate_size)
    specs.append(TensorSpec(f"{p}mlp.shared_expert_gate.weight", (1, h), "linear"))
    return specs


def _layer_specs(p: str, m: ModelConfig, full: bool, moe: bool) -> list[TensorSpec]:
    h = m.hidden_size
    specs = [TensorSpec(f"{p}input_layernorm.weight", (h,), "norm")]
    specs += _attn_specs(p, m) if full else _gdn_specs(p, m)
    specs.append(TensorSpec(f"{p}post_attention_layernorm.weight", (h,), "norm"))
    specs += _moe_specs(p, m) if moe else _swiglu_specs(f"{p}mlp.", h, m.intermediate_size)
    return specs


def _mtp_specs(m: ModelConfig) -> list[TensorSpec]:
    h = m.hidden_size
    specs = [
        TensorSpec("mtp.fc.weight", (h, 2 * h), "linear"),  # input = cat(norm(emb), norm(hidden))
        TensorSpec("mtp.pre_fc_norm_embedding.weight", (h,), "norm"),
        TensorSpec("mtp.pre_fc_norm_hidden.weight", (h,), "norm"),
    ]
    specs += _layer_specs("mtp.layers.0.", m, full=True, moe=m.num_experts > 0)
    specs.append(TensorSpec("mtp.norm.weight", (h,), "norm"))
    return specs


def tensor_specs(hf: dict[str, Any], *, with_mtp: bool = True) -> list[TensorSpec]:
    """Every checkpoint tensor of config.json dict `hf`, in a fixed (generation) order."""
    m = ModelConfig.from_hf(hf)
    specs = [TensorSpec("model.embed_tokens.weight", (m.vocab_size, m.hidden_size), "embed")]
    for i, (kind, moe) in enumerate(zip(m.layer_types, m.moe_layers)):
        specs += _layer_specs(f"model.layers.{i}.", m, full=kind == FULL, moe=moe)
    specs.append(TensorSpec("model.norm.weight", (m.hidden_size,), "norm"))
    specs.append(TensorSpec("lm_head.weight", (m.vocab_size, m.hidden_size), "linear"))
    if with_mtp:
        specs += _mtp_specs(m)
    return specs


def _init_tensor(init: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Draw one float32 tensor from `gen` for initialiser kind `init`."""
    if init == "linear":  # std fan_in ** -0.5 keeps each projection's output RMS ~ input RMS
        return torch.randn(shape, generator=gen, dtype=torch.float32) * shape[-1] ** -0.5
    if init in ("embed", "conv"):
        std = 1.0 if init == "embed" else 0.5
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std
    if init == "norm":  # zero-centred RMSNorm: y = x_hat * (1 + w)
        return torch.randn(shape, generator=gen, dtype=torch.float32) * 0.1
    if init in ("gated_norm", "dt_bias"):
        return 1.0 + torch.randn(shape, generator=gen, dtype=torch.float32) * 0.1
    if init == "a_log":  # A in [0.1, 1): moderate decays keep the tiny models well conditioned
        u = torch.rand(shape, generator=gen, dtype=torch.float32)
        return torch.log(0.1 + 0.9 * u)
    raise ValueError(f"unknown initialiser {init!r}")


def random_state_dict(hf: dict[str, Any], *, seed: int = 0, dtype: str = "float32",
                      with_mtp: bool = True) -> dict[str, torch.Tensor]:
    """Deterministic random weights for config `hf` (same seed -> identical tensors)."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    target = getattr(torch, dtype)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for spec in tensor_specs(hf, with_mtp=with_mtp):
        t = _init_tensor(spec.init, spec.shape, gen)
        keep_fp32 = spec.name.rsplit(".", 1)[-1] in FP32_TENSORS
        state[spec.name] = t if keep_fp32 else t.to(target).contiguous()
    return state


def num_parameters(hf: dict[str, Any], *, with_mtp: bool = False) -> int:
    """Parameter count from the specs (no allocation; works for the 80B config too)."""
    return sum(math.prod(s.shape) for s in tensor_specs(hf, with_mtp=with_mtp))
