"""Checkpoint loading: single-file and sharded checkpoints load the same weights; a damaged
checkpoint fails with an error naming the tensor; dummy weights need no checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from qnext.worker.config import LoadConfig
from qnext.worker.runtime.model_runner import build_model, build_mtp
from qnext.worker.runtime.weights import CheckpointError
from tests.models.harness import make_config


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _damaged_copy(src, dst, edit):
    """Copy a single-file checkpoint, letting `edit(tensors)` change its tensor dict."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_sharded_equals_single_file(tiny_checkpoint):
    single = _state(build_model(make_config(tiny_checkpoint("tiny"))))
    sharded = _state(build_model(make_config(tiny_checkpoint("tiny", num_shards=3))))
    assert single.keys() == sharded.keys()
    for name in single:
        assert torch.equal(single[name], sharded[name]), name


def test_loaded_values_match_checkpoint(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    model = build_model(make_config(path))
    tensors = load_file(str(path / "model.safetensors"))
    assert torch.equal(model.model.embed_tokens.weight, tensors["model.embed_tokens.weight"])
    w13 = model.model.layers[0].mlp.experts.w13[3]
    inter = w13.shape[0] // 2
    assert torch.equal(w13[:inter], tensors["model.layers.0.mlp.experts.3.gate_proj.weight"])
    assert torch.equal(w13[inter:], tensors["model.layers.0.mlp.experts.3.up_proj.weight"])
    conv = tensors["model.layers.0.linear_attn.conv1d.weight"]
    assert torch.equal(model.model.layers[0].linear_attn.conv1d.weight, conv[:, 0])


def test_missing_tensor_is_named(tiny_checkpoint, tmp_path):
    name = "model.layers.1.linear_attn.A_log"
    bad = _damaged_copy(tiny_checkpoint("tiny"), tmp_path / "ck", lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.linear_attn\.A_log"):
        build_model(make_config(bad))


def test_wrong_shape_is_named(tiny_checkpoint, tmp_path):
    name = "model.layers.3.self_attn.k_proj.weight"

    def edit(t):
        t[name] = t[name][:-1]

    bad = _damaged_copy(tiny_checkpoint("tiny"), tmp_path / "ck", edit)
    with pytest.raises(CheckpointError, match=r"k_proj\.weight.*shape"):
        build_model(make_config(bad))


def test_unexpected_tensor_is_named(tiny_checkpoint, tmp_path):
    def edit(t):
        t["model.layers.0.linear_attn.bogus"] = torch.zeros(2)

    bad = _damaged_copy(tiny_checkpoint("tiny"), tmp_path / "ck", edit)
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*bogus"):
        build_model(make_config(bad))


def test_truncated_file_is_reported(tiny_checkpoint, tmp_path):
    bad = shutil.copytree(tiny_checkpoint("tiny"), tmp_path / "ck")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        build_model(make_config(bad))


def test_missing_shard_is_reported(tiny_checkpoint, tmp_path):
    bad = shutil.copytree(tiny_checkpoint("tiny", num_shards=3), tmp_path / "ck")
    weight_map = json.loads((bad / "model.safetensors.index.json").read_text())["weight_map"]
    victim = sorted(set(weight_map.values()))[1]
    (bad / victim).unlink()
    with pytest.raises(CheckpointError, match=victim):
        build_model(make_config(bad))


def test_dummy_weights_need_no_checkpoint(tiny_checkpoint):
    cfg = make_config(tiny_checkpoint("tiny"))
    cfg = type(cfg)(model=cfg.model, load=LoadConfig(load_format="dummy", dtype="bfloat16"))
    model = build_model(cfg)
    weights = [p for p in model.parameters()]
    assert all(torch.isfinite(p.float()).all() for p in weights)
    assert model.model.layers[0].mlp.experts.w13.dtype == torch.bfloat16
    assert model.model.layers[0].linear_attn.A_log.dtype == torch.float32
    assert all(p.float().std() > 0 for p in weights if p.numel() > 1)


def test_mtp_head_loads_its_own_tensors(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    mtp = build_mtp(make_config(path))
    tensors = load_file(str(path / "model.safetensors"))
    assert torch.equal(mtp.fc.weight, tensors["mtp.fc.weight"])
    qkv = mtp.layers[0].self_attn.qkv_proj
    q = tensors["mtp.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(qkv.weight[:q.shape[0]], q)
    assert torch.equal(qkv.weight[-qkv.sizes[2]:], tensors["mtp.layers.0.self_attn.v_proj.weight"])


def test_checkpoint_without_mtp_fails_for_mtp(tiny_checkpoint):
    path = tiny_checkpoint("tiny", with_mtp=False)
    build_model(make_config(path))  # the target does not need mtp.*
    with pytest.raises(CheckpointError, match="missing"):
        build_mtp(make_config(path))
