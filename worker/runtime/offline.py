"""Single-process offline generation on one ModelRunner (greedy), used by `qnext generate` and
smoke tests until the engine issue brings the scheduler and sampler."""

from __future__ import annotations

import torch

from qnext.worker.runtime.inputs import SeqChunk
from qnext.worker.runtime.model_runner import ModelRunner


def greedy_generate(runner: ModelRunner, prompt_ids: list[int], max_new_tokens: int,
                    eos_ids: tuple[int, ...] = ()) -> list[int]:
    """Greedy continuation of one prompt, using state slot 1 and pages 1.. of the runner."""
    if not prompt_ids:
        raise ValueError("prompt is empty")
    page_size = runner.kv_pool.page_size
    total = len(prompt_ids) + max_new_tokens
    pages = list(range(1, 1 + -(-total // page_size)))
    if pages[-1] >= runner.kv_pool.num_pages:
        raise ValueError(f"{total} tokens do not fit the KV pool "
                         f"({runner.kv_pool.num_pages - 1} pages of {page_size})")
    runner.state_pool.zero(torch.tensor([1], device=runner.device))
    out: list[int] = []
    chunk = SeqChunk(list(prompt_ids), 0, 1, pages)
    for _ in range(max_new_tokens):
        logits, _ = runner.forward([chunk])
        out.append(int(logits[0].argmax()))
        if out[-1] in eos_ids:
            break
        chunk = SeqChunk([out[-1]], chunk.seq_len, 1, pages)
    return out

