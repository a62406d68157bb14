"""Weight loading: stream tensors out of a Hugging Face safetensors checkpoint (single file or
sharded with model.safetensors.index.json; shards read in parallel), map names through the
model's declared rules and let each parameter's `weight_loader` copy this rank's shard.
`--load-format dummy` instead fills every parameter with seeded random values directly on the
target device.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from qnext.worker.runtime.shards import CheckpointError, read_shards

__all__ = ["CheckpointError", "checkpoint_files", "init_dummy_weights", "iter_checkpoint",
           "load_weights"]
READ_WORKERS = min(8, os.cpu_count() or 1)  # shards read at once


def checkpoint_files(path: str | Path) -> list[Path]:
    root = Path(path)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [root / name for name in dict.fromkeys(weight_map.values())]
    elif (root / "model.safetensors").is_file():
        files = [root / "model.safetensors"]
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no safetensors weights in {root}")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint shard(s) listed in the index are missing: {missing}")
    return files


def iter_checkpoint(path: str | Path, workers: int = READ_WORKERS,
                    progress: bool | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) one tensor at a time (a shard is never fully materialised),
    reading up to `workers` shards in parallel (`runtime/shards.py`)."""
    return read_shards(checkpoint_files(path), workers, progress)


class WeightMapper:
    """Resolves checkpoint names to (parameter, loader kwargs) for one model."""

    def __init__(self, model: nn.Module, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
        self.params = dict(model.named_parameters())
        self.rules = [(re.compile(p), t) for p, t in getattr(model, "checkpoint_rules", ())]
        self.prefix, self.skip = prefix, skip

    def resolve(self, name: str) -> tuple[str, dict[str, str]] | None:
        """None for tensors this model ignores; CheckpointError for unknown ones. A name that
        is one of the model's parameters loads there; the rules map the others."""
        if any(name.startswith(s) for s in self.skip) or not name.startswith(self.prefix):
            return None
        local = name[len(self.prefix):]
        if local in self.params:
            return local, {}
        for pattern, template in self.rules:
            match = pattern.match(local)
            if match:
                kwargs = {k: v for k, v in match.groupdict().items() if k != "prefix"}
                return match.expand(template), kwargs
        raise CheckpointError(f"unexpected tensor {name!r} in checkpoint")


def load_weights(model: nn.Module, tensors: Iterator[tuple[str, torch.Tensor]],
                 prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Fill every parameter of `model`; raise naming the first bad, missing or extra tensor."""
    mapper = WeightMapper(model, prefix, skip)
    loaded: Counter[str] = Counter()
    for name, tensor in tensors:
        target = mapper.resolve(name)
        if target is None:
            continue
        param_name, kwargs = target
        param = mapper.params[param_name]
        try:
            with torch.no_grad():
                param.weight_loader(param, tensor, **kwargs)
        except (ValueError, IndexError) as exc:
            raise CheckpointError(f"tensor {name!r}: {exc}") from exc
        loaded[param_name] += 1
    missing = [n for n, p in mapper.params.items() if loaded[n] < getattr(p, "num_loads", 1)]
    if missing:
        raise CheckpointError(f"checkpoint is missing tensor(s) for: {', '.join(missing[:8])}"
                              + (" ..." if len(missing) > 8 else ""))


def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Random weights of the right shapes, made on the parameters' own device (no host copy).

    Norm-like vectors get 1 + small noise so the zero-centred (1 + w) scale stays sane; matrices
    get std fan_in ** -0.5; the GDN gates get A_log = log(U(1, 16)) and dt_bias ~ 1.
    """
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            _init_dummy(name, param, gen)


def _init_dummy(name: str, param: torch.Tensor, gen: torch.Generator) -> None:
    if name.endswith("A_log"):
        param.uniform_(1.0, 16.0, generator=gen).log_()
    elif param.dim() == 1:
        param.normal_(0.0, 0.1, generator=gen)
        if name.endswith(("dt_bias", "linear_attn.norm.weight")):
            param.add_(1.0)
    else:
        param.normal_(0.0, param.shape[-1] ** -0.5, generator=gen)
