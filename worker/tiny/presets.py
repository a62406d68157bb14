"""Qwen3-Next config.json dicts: tiny presets for CPU tests and the real 80B-A3B shape.

All use the transformers-4.x spelling (top-level `rope_theta`, `partial_rotary_factor`).
"""

from __future__ import annotations

import copy
from typing import Any

from qnext.worker.tiny.tokenizer import (
    ENDOFTEXT_ID,
    IM_END_ID,
    MODEL_MAX_LENGTH,
    TOKENIZER_VOCAB_SIZE,
)

_COMMON: dict[str, Any] = {
    "architectures": ["Qwen3NextForCausalLM"],
    "model_type": "qwen3_next",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "partial_rotary_factor": 0.25,
    "rope_scaling": None,
    "rms_norm_eps": 1e-6,
    "linear_conv_kernel_dim": 4,
    "decoder_sparse_step": 1,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
    "tie_word_embeddings": False,
    "use_cache": True,
    "use_sliding_window": False,
}

_TINY_IDS: dict[str, Any] = {
    "bos_token_id": None,
    "eos_token_id": IM_END_ID,
    "pad_token_id": ENDOFTEXT_ID,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "torch_dtype": "float32",
    "dtype": "float32",
}

_TINY: dict[str, Any] = {
    **_COMMON, **_TINY_IDS,
    "vocab_size": TOKENIZER_VOCAB_SIZE,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "full_attention_interval": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "rope_theta": 10000.0,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "mlp_only_layers": [],
    "intermediate_size": 96,
}

_TINY_B: dict[str, Any] = {
    **_COMMON, **_TINY_IDS,
    "vocab_size": TOKENIZER_VOCAB_SIZE + 3,  # odd size; the extra rows are never produced
    "hidden_size": 48,
    "num_hidden_layers": 6,
    "layer_types": ["linear_attention", "full_attention", "linear_attention",
                    "linear_attention", "full_attention", "linear_attention"],
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "rope_theta": 1000000.0,
    "linear_num_key_heads": 4,
    "linear_num_value_heads": 8,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "num_experts": 16,
    "num_experts_per_tok": 4,
    "norm_topk_prob": False,
    "moe_intermediate_size": 24,
    "shared_expert_intermediate_size": 40,
    "mlp_only_layers": [2],  # layer 2 is a dense SwiGLU MLP
    "intermediate_size": 72,
}

_TINY_TP: dict[str, Any] = {
    **_TINY,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "linear_num_key_heads": 4,
    "linear_num_value_heads": 8,
}

#: name -> config.json dict. Treat as read-only; use `preset_config(name)` for a private copy.
TINY_PRESETS: dict[str, dict[str, Any]] = {"tiny": _TINY, "tiny-b": _TINY_B, "tiny-tp": _TINY_TP}

#: Qwen/Qwen3-Next-80B-A3B config.json (for `--load-format dummy` full-size runs; no weights).
QWEN3_NEXT_80B_A3B: dict[str, Any] = {
    **_COMMON,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vocab_size": 151936,
    "hidden_size": 2048,
    "num_hidden_layers": 48,
    "full_attention_interval": 4,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "rope_theta": 10000000.0,
    "max_position_embeddings": 262144,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "num_experts": 512,
    "num_experts_per_tok": 10,
    "norm_topk_prob": True,
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "mlp_only_layers": [],
    "intermediate_size": 5120,
    "torch_dtype": "bfloat16",
}


def preset_config(name: str) -> dict[str, Any]:
    """A deep copy of preset `name` ("tiny", "tiny-b", "tiny-tp" or "80b-a3b")."""
    if name == "80b-a3b":
        return copy.deepcopy(QWEN3_NEXT_80B_A3B)
    if name not in TINY_PRESETS:
        raise KeyError(f"unknown tiny preset {name!r}; choose from {sorted(TINY_PRESETS)}")
    return copy.deepcopy(TINY_PRESETS[name])
