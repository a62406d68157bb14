"""Glue for `qnext generate`: tokenizer (and chat template) + Engine.generate."""

from __future__ import annotations

from typing import NamedTuple

from qnext.worker.config import Config


class SamplingFlags(NamedTuple):
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int | None
    seed: int | None


def run_generate(cfg: Config, prompts: list[str], chat: bool,
                 flags: SamplingFlags) -> list[dict]:
    """One dict per prompt: the generated text, its token ids, the finish reason and the
    prompt tokens reused from the prefix cache."""
    from transformers import AutoTokenizer

    from qnext.worker.engine import Engine
    from qnext.worker.sched.request import SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(cfg.load.model_path)
    if chat:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                 tokenize=False, add_generation_prompt=True)
                   for p in prompts]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    params = SamplingParams(temperature=flags.temperature, top_p=flags.top_p,
                            top_k=flags.top_k, seed=flags.seed,
                            max_new_tokens=flags.max_new_tokens)
    engine = Engine(cfg)
    try:
        outputs = engine.generate(ids, params)
    finally:
        engine.close()
    return [{"text": tokenizer.decode(out.output_ids, skip_special_tokens=True),
             "token_ids": out.output_ids, "finish_reason": out.finish_reason.value,
             "cached_tokens": out.cached_tokens}
            for out in outputs]
