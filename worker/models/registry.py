"""Maps a checkpoint's `architectures[0]` to the model class, imported lazily."""

from __future__ import annotations

import importlib

from torch import nn

_MODELS: dict[str, tuple[str, str]] = {
    "Qwen3NextForCausalLM": ("qnext.worker.models.qwen3_next", "Qwen3NextForCausalLM"),
}


def model_class(architecture: str) -> type[nn.Module]:
    """The class serving `architecture`; ValueError names the supported ones otherwise."""
    if architecture not in _MODELS:
        raise ValueError(f"unsupported architecture {architecture!r}; supported: "
                         f"{', '.join(sorted(_MODELS))}")
    module, name = _MODELS[architecture]
    return getattr(importlib.import_module(module), name)


def supported_architectures() -> list[str]:
    return sorted(_MODELS)
