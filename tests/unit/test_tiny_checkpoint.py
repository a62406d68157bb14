"""Tiny checkpoint generator: presets parse, the tokenizer round-trips, and the written weights
load into transformers' Qwen3NextForCausalLM with no missing keys and non-degenerate logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qnext.worker.config import FULL, LINEAR, ModelConfig
from qnext.worker.tiny import (
    CHAT_TEMPLATE,
    QWEN3_NEXT_80B_A3B,
    SPECIAL_TOKEN_IDS,
    TINY_PRESETS,
    TOKENIZER_VOCAB_SIZE,
    build_tokenizer,
    tensor_specs,
    train_tokenizer,
    write_tiny_checkpoint,
)
from qnext.worker.tiny.checkpoint import INDEX_FILE, SINGLE_FILE, main, shard_name

transformers = pytest.importorskip("transformers")

EXPECTED_IDS = {"<|endoftext|>": 379, "<|im_start|>": 380, "<|im_end|>": 381,
                "<think>": 382, "</think>": 383}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {name: write_tiny_checkpoint(root / name, name) for name in TINY_PRESETS}


def _load_dir(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    return state


# --- tokenizer -------------------------------------------------------------------------------

def test_tokenizer_vocab_and_special_ids() -> None:
    tok = train_tokenizer()
    assert TOKENIZER_VOCAB_SIZE == 384 == tok.get_vocab_size()
    assert SPECIAL_TOKEN_IDS == EXPECTED_IDS
    assert {t: tok.token_to_id(t) for t in EXPECTED_IDS} == EXPECTED_IDS


def test_tokenizer_autotokenizer_roundtrip_and_chat(tmp_path: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(build_tokenizer(tmp_path))
    assert len(tok) == TOKENIZER_VOCAB_SIZE and tok.model_max_length == 4096
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (381, 379, None)
    texts = ["Hello, world!", "  leading spaces\n\n\ttabs  ", "def f(x):\n    return x ** 2\n",
             "café naïve e\u0301 東京 Привет 👋🏽 \x00\x07\x7f", "1234567890 3.14159",
             "<|im_start|>user\nhi<|im_end|>\n<think>hmm</think>", ""]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert all(0 <= i < TOKENIZER_VOCAB_SIZE for i in ids)
        assert tok.decode(ids) == text
    assert tok.encode("<|im_end|>", add_special_tokens=False) == [381]
    assert tok.decode(tok.encode("a<|im_end|><think>b"), skip_special_tokens=True) == "a<think>b"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    chat = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert chat == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert not tok.apply_chat_template(msgs, tokenize=False).endswith("assistant\n")
    assert tok.chat_template == CHAT_TEMPLATE


def test_tokenizer_is_deterministic(tmp_path: Path) -> None:
    a, b, c = (build_tokenizer(tmp_path / n) for n in ("a", "b", "c"))
    code = f"from qnext.worker.tiny import build_tokenizer; build_tokenizer({str(c)!r})"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)  # a fresh process
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes() == (c / name).read_bytes()


# --- presets ---------------------------------------------------------------------------------

def test_presets_parse_with_model_config() -> None:
    tiny = ModelConfig.from_hf(TINY_PRESETS["tiny"])
    assert tiny.layer_types == (LINEAR, LINEAR, LINEAR, FULL) and all(tiny.moe_layers)
    assert tiny.vocab_size == TOKENIZER_VOCAB_SIZE and tiny.eos_token_ids == (381,)
    assert tiny.rotary_dim == 8 and tiny.conv_dim == 2 * 32 + 64
    b = ModelConfig.from_hf(TINY_PRESETS["tiny-b"])
    assert b.layer_types == (LINEAR, FULL, LINEAR, LINEAR, FULL, LINEAR)
    assert b.moe_layers == (True, True, False, True, True, True)
    assert b.vocab_size == TOKENIZER_VOCAB_SIZE + 3 and not b.norm_topk_prob
    tp = ModelConfig.from_hf(TINY_PRESETS["tiny-tp"])
    heads = (tp.num_attention_heads, tp.num_key_value_heads, tp.linear_num_key_heads,
             tp.linear_num_value_heads)
    assert all(h % 4 == 0 for h in heads)


def test_80b_config_parses() -> None:
    m = ModelConfig.from_hf(QWEN3_NEXT_80B_A3B)
    assert (m.vocab_size, m.hidden_size, m.num_layers, m.head_dim) == (151936, 2048, 48, 256)
    assert m.full_layer_ids == tuple(range(3, 48, 4)) and len(m.linear_layer_ids) == 36
    assert (m.num_experts, m.num_experts_per_tok, m.rope_theta) == (512, 10, 1e7)
    assert m.conv_dim == 8192 and m.eos_token_ids == (151645,) and all(m.moe_layers)
    assert m.max_position_embeddings == 262144 and m.rotary_dim == 64


# --- checkpoint ------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", sorted(TINY_PRESETS))
def test_checkpoint_loads_in_transformers(ckpts: dict[str, Path], preset: str) -> None:
    model, info = transformers.Qwen3NextForCausalLM.from_pretrained(
        ckpts[preset], dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert all(k.startswith("mtp.") for k in info["unexpected_keys"])
    disk = _load_dir(ckpts[preset])
    params = dict(model.named_parameters())
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.linear_attn.A_log"):
        assert torch.equal(params[name], disk[name])
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TOKENIZER_VOCAB_SIZE, (2, 24), generator=gen)
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 24, disk["lm_head.weight"].shape[0])
    assert torch.isfinite(logits).all() and 0.3 < logits.std().item() < 5.0
    top2 = logits.topk(2, dim=-1).values
    assert ((top2[..., 0] - top2[..., 1]) > 1e-3).float().mean().item() >= 0.9


def test_tensor_names_and_shapes(ckpts: dict[str, Path]) -> None:
    state = _load_dir(ckpts["tiny"])
    assert list(state) == sorted(s.name for s in tensor_specs(TINY_PRESETS["tiny"]))
    shapes = {
        "model.layers.0.linear_attn.in_proj_qkvz.weight": (192, 64),
        "model.layers.0.linear_attn.in_proj_ba.weight": (8, 64),
        "model.layers.0.linear_attn.conv1d.weight": (128, 1, 4),
        "model.layers.0.linear_attn.norm.weight": (16,),
        "model.layers.0.linear_attn.out_proj.weight": (64, 64),
        "model.layers.3.self_attn.q_proj.weight": (256, 64),
        "model.layers.3.self_attn.k_proj.weight": (64, 64),
        "model.layers.3.self_attn.o_proj.weight": (64, 128),
        "model.layers.3.self_attn.q_norm.weight": (32,),
        "model.layers.1.mlp.gate.weight": (8, 64),
        "model.layers.1.mlp.experts.7.down_proj.weight": (64, 32),
        "model.layers.1.mlp.shared_expert_gate.weight": (1, 64),
        "mtp.fc.weight": (64, 128),
        "mtp.layers.0.self_attn.q_proj.weight": (256, 64),
        "mtp.layers.0.mlp.experts.0.gate_proj.weight": (32, 64),
        "mtp.norm.weight": (64,),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    b = _load_dir(ckpts["tiny-b"])
    assert b["model.layers.2.mlp.gate_proj.weight"].shape == (72, 48)
    assert "model.layers.2.mlp.gate.weight" not in b
    assert "model.layers.1.self_attn.q_norm.weight" in b


def test_init_statistics(ckpts: dict[str, Path]) -> None:
    s = _load_dir(ckpts["tiny"])
    a_log = s["model.layers.0.linear_attn.A_log"]
    assert a_log.min() >= torch.log(torch.tensor(0.1)) and a_log.max() < 0.0  # A in [0.1, 1)
    assert abs(s["model.layers.0.linear_attn.dt_bias"].mean().item() - 1.0) < 0.2
    assert abs(s["model.layers.0.linear_attn.norm.weight"].mean().item() - 1.0) < 0.2
    assert 0.03 < s["model.norm.weight"].std().item() < 0.3
    assert abs(s["model.embed_tokens.weight"].std().item() - 1.0) < 0.05
    assert abs(s["lm_head.weight"].std().item() * 64 ** 0.5 - 1.0) < 0.05


def test_sharded_equals_single(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = write_tiny_checkpoint(tmp_path, "tiny", num_shards=3)
    files = [out / shard_name(k, 3) for k in (1, 2, 3)]
    assert all(f.is_file() for f in files) and not (out / SINGLE_FILE).exists()
    index = json.loads((out / INDEX_FILE).read_text())
    shards = [load_file(str(f)) for f in files]
    assert all(shards)
    single = load_file(str(ckpts["tiny"] / SINGLE_FILE))
    assert index["weight_map"] == {n: f.name for f, sh in zip(files, shards) for n in sh}
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in single.values())
    merged = {k: v for sh in shards for k, v in sh.items()}
    assert merged.keys() == single.keys()
    assert all(torch.equal(merged[k], single[k]) for k in single)
    write_tiny_checkpoint(tmp_path, "tiny")  # rewriting single-file removes the stale shards
    assert sorted(p.name for p in out.glob("model*")) == [SINGLE_FILE]


def test_determinism(ckpts: dict[str, Path], tmp_path: Path) -> None:
    same = write_tiny_checkpoint(tmp_path / "same", "tiny", seed=0)
    other = write_tiny_checkpoint(tmp_path / "other", "tiny", seed=1)
    ref = (ckpts["tiny"] / SINGLE_FILE).read_bytes()
    assert (same / SINGLE_FILE).read_bytes() == ref
    assert (other / SINGLE_FILE).read_bytes() != ref
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (same / name).read_bytes() == (ckpts["tiny"] / name).read_bytes()


def test_bfloat16_and_no_mtp(tmp_path: Path) -> None:
    out = write_tiny_checkpoint(tmp_path, "tiny-b", dtype="bfloat16", with_mtp=False, seed=3)
    state = load_file(str(out / SINGLE_FILE))
    assert not any(k.startswith("mtp.") for k in state)
    assert state["model.layers.0.linear_attn.A_log"].dtype == torch.float32
    assert state["model.layers.0.linear_attn.dt_bias"].dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    model, info = transformers.Qwen3NextForCausalLM.from_pretrained(
        out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_configs_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--preset", "tiny-tp", "--seed", "2", "--shards", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["num_attention_heads"] == 8 and cfg["rope_theta"] == 10000.0
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [381, 379] and gen["pad_token_id"] == 379
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert hf.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    assert (tmp_path / INDEX_FILE).is_file() and ModelConfig.from_dir(tmp_path).num_layers == 4
