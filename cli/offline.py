"""Glue for `qnext generate`: tokenizer + ModelRunner + greedy loop."""

from __future__ import annotations

from pathlib import Path

from qnext.worker.config import Config, LoadConfig, ModelConfig


def run_generate(path: Path, prompt: str, max_new_tokens: int, dtype: str, device: str,
                 load_format: str) -> str:
    from transformers import AutoTokenizer

    from qnext.worker.runtime.model_runner import ModelRunner
    from qnext.worker.runtime.offline import greedy_generate

    cfg = Config(model=ModelConfig.from_dir(path),
                 load=LoadConfig(model_path=str(path), dtype=dtype, device=device,
                                 load_format=load_format))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    ids = tokenizer(prompt)["input_ids"]
    runner = ModelRunner(cfg, num_pages=len(ids) + max_new_tokens + 2, num_slots=2)
    out = greedy_generate(runner, ids, max_new_tokens, cfg.model.eos_token_ids)
    return tokenizer.decode(out, skip_special_tokens=False)
