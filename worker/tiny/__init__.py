"""Tiny Qwen3-Next checkpoints for tests: config presets, a byte-level BPE tokenizer and
seeded random weights under the real on-disk tensor names.
"""

from __future__ import annotations

import importlib
from typing import Any

from qnext.worker.tiny.presets import QWEN3_NEXT_80B_A3B, TINY_PRESETS, preset_config
from qnext.worker.tiny.tokenizer import (
    CHAT_TEMPLATE,
    ENDOFTEXT_ID,
    IM_END_ID,
    IM_START_ID,
    SPECIAL_TOKEN_IDS,
    TOKENIZER_VOCAB_SIZE,
    build_tokenizer,
    train_tokenizer,
)
from qnext.worker.tiny.weights import TensorSpec, num_parameters, random_state_dict, tensor_specs

__all__ = [
    "CHAT_TEMPLATE",
    "ENDOFTEXT_ID",
    "IM_END_ID",
    "IM_START_ID",
    "QWEN3_NEXT_80B_A3B",
    "SPECIAL_TOKEN_IDS",
    "TINY_PRESETS",
    "TOKENIZER_VOCAB_SIZE",
    "TensorSpec",
    "build_tokenizer",
    "generation_config",
    "num_parameters",
    "preset_config",
    "random_state_dict",
    "save_state_dict",
    "shard_plan",
    "tensor_specs",
    "train_tokenizer",
    "write_tiny_checkpoint",
]

# Loaded on first use, so `python -m qnext.worker.tiny.checkpoint` runs without a runpy warning.
_CHECKPOINT_NAMES = ("generation_config", "save_state_dict", "shard_plan", "write_tiny_checkpoint")


def __getattr__(name: str) -> Any:
    if name in _CHECKPOINT_NAMES:
        return getattr(importlib.import_module("qnext.worker.tiny.checkpoint"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
