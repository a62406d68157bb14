"""Write a complete tiny Qwen3-Next checkpoint directory (config, tokenizer, safetensors weights).

CLI: `python -m qnext.worker.tiny.checkpoint OUT [--preset tiny] [--seed 0] [--shards 1]`.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from qnext.worker.tiny.presets import TINY_PRESETS, preset_config
from qnext.worker.tiny.tokenizer import ENDOFTEXT_ID, build_tokenizer
from qnext.worker.tiny.weights import random_state_dict

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def shard_name(k: int, n: int) -> str:
    """HF shard file name, 1-based: model-00001-of-00003.safetensors."""
    return f"model-{k:05d}-of-{n:05d}.safetensors"


def shard_plan(state: dict[str, torch.Tensor], num_shards: int) -> list[list[str]]:
    """Split the tensor names, in order, into `num_shards` non-empty runs of similar byte size."""
    names = list(state)
    if not 1 <= num_shards <= len(names):
        raise ValueError(f"num_shards must be in [1, {len(names)}], got {num_shards}")
    total = sum(t.nbytes for t in state.values())
    shards: list[list[str]] = [[] for _ in range(num_shards)]
    k, acc = 0, 0
    for i, name in enumerate(names):
        left = len(names) - i  # tensors not yet placed, this one included
        if shards[k] and k < num_shards - 1 and (
                acc >= (k + 1) * total / num_shards or left == num_shards - 1 - k):
            k += 1
        shards[k].append(name)
        acc += state[name].nbytes
    return shards


def save_state_dict(out: Path, state: dict[str, torch.Tensor], num_shards: int = 1) -> list[Path]:
    """Write `state` as model.safetensors, or as shards plus model.safetensors.index.json."""
    for old in [*out.glob("model*.safetensors"), out / INDEX_FILE]:
        old.unlink(missing_ok=True)  # never mix a stale layout with the new one
    meta = {"format": "pt"}
    if num_shards == 1:
        save_file(state, str(out / SINGLE_FILE), metadata=meta)
        return [out / SINGLE_FILE]
    files, weight_map = [], {}
    for k, names in enumerate(shard_plan(state, num_shards), start=1):
        file = shard_name(k, num_shards)
        save_file({n: state[n] for n in names}, str(out / file), metadata=meta)
        weight_map.update({n: file for n in names})
        files.append(out / file)
    index = {"metadata": {"total_size": sum(t.nbytes for t in state.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    _write_json(out / INDEX_FILE, index)
    return files


def generation_config(hf: dict[str, Any]) -> dict[str, Any]:
    """generation_config.json: eos = [config eos, <|endoftext|>], greedy by default."""
    eos = hf.get("eos_token_id")
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    pad = hf.get("pad_token_id", ENDOFTEXT_ID)
    if pad is not None and pad not in eos_ids:
        eos_ids.append(pad)
    return {"bos_token_id": hf.get("bos_token_id"), "eos_token_id": eos_ids,
            "pad_token_id": pad, "do_sample": False}


def _write_json(file: Path, obj: Any) -> None:
    file.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_tiny_checkpoint(path: str | Path, preset: str | dict[str, Any] = "tiny", *,
                          seed: int = 0, dtype: str = "float32", num_shards: int = 1,
                          with_mtp: bool = True) -> Path:
    """Write config.json, generation_config.json, tokenizer files and seeded random weights.

    `preset` is a `TINY_PRESETS` name or a config.json dict. Returns the directory.
    """
    hf = preset_config(preset) if isinstance(preset, str) else copy.deepcopy(preset)
    hf["torch_dtype"] = hf["dtype"] = dtype
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = random_state_dict(hf, seed=seed, dtype=dtype, with_mtp=with_mtp)
    _write_json(out / "config.json", dict(sorted(hf.items())))
    _write_json(out / "generation_config.json", generation_config(hf))
    build_tokenizer(out)
    save_state_dict(out, state, num_shards)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the written directory."""
    ap = argparse.ArgumentParser(prog="python -m qnext.worker.tiny.checkpoint",
                                 description="Write a tiny random Qwen3-Next checkpoint.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default="tiny", choices=sorted(TINY_PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--no-mtp", action="store_true", help="omit the mtp.* tensors")
    args = ap.parse_args(argv)
    out = write_tiny_checkpoint(args.out, args.preset, seed=args.seed, dtype=args.dtype,
                                num_shards=args.shards, with_mtp=not args.no_mtp)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
