"""Kernel warm-up at start-up: forwards over throw-away inputs of a few shape classes.

Triton compiles a kernel the first time it meets a new specialisation of its integer
arguments (a count of 1, a multiple of 16, anything else) and of its tile configuration
(the MoE's decode and prefill tiles). Without a warm-up, the first requests that bring a new
class (the first batch of several prompts, the first long prompt) stall every rank for seconds
of compilation. SGLang sends a warm-up request for the same reason; its flag name,
`--skip-server-warmup`, turns this one off.

The forwards read and write only the dummy slot 0 and the reserved page 0 (what padded graph
rows use), so no cache, pool entry, request or counter sees them. Decode batches are covered
by graph capture when graphs are on; eager decode runs here too.
"""

from __future__ import annotations

import torch

from qnext.kernels import compile_log
from qnext.worker.runtime.inputs import SeqChunk, build_forward_batch

# (new tokens, cached prefix) per sequence of each warm-up forward. Triton keys a compiled
# kernel on every integer argument's class at once (1, a multiple of 16, anything else), so
# the forwards cross the classes of the token count with those of the sequence count, with
# and without cached prefixes (later chunks, cache hits) and with decodes mixed into a
# prefill step (the usual step under load)
SHAPES = (
    ((17, 0),),  # one odd prompt
    ((64, 0),),  # one aligned prompt
    ((16, 0), (17, 0), (33, 0)),  # several prompts, odd total
    ((16, 0), (48, 0)),  # several prompts, aligned total
    ((17, 33),),  # a later chunk of a prompt, or a cache hit: a cached prefix
    ((16, 32), (15, 17), (1, 9)),  # mixed: chunks after a prefix and a decode, 32 tokens
    ((18, 0),) + ((1, 5),) * 15,  # 16 sequences, odd total: a new prompt among decodes
    ((16, 0),) * 16,  # 16 sequences, aligned total
    ((1, 5),), ((1, 5), (1, 9)), ((1, 5),) * 16,  # eager decode (graphs cover it when on)
    ((2048, 0),),  # a long prompt (also the MoE prefill tiles)
)
FULL_STEP_PROMPTS = 8  # the whole per-step prefill budget, as this many prompts


def shapes_for(max_tokens: int | None) -> list[tuple[tuple[int, int], ...]]:
    """SHAPES within `max_tokens` tokens a forward, then one forward of the whole budget."""
    if max_tokens is None:
        return list(SHAPES)
    kept = [shape for shape in SHAPES if sum(new for new, _ in shape) <= max_tokens]
    each = max_tokens // FULL_STEP_PROMPTS
    return kept + ([((each, 0),) * FULL_STEP_PROMPTS] if each else [])


def chunks_for(shape: tuple[tuple[int, int], ...], page_size: int) -> list[SeqChunk]:
    """Sequences on slot 0 and page 0 only, token id 1."""
    return [SeqChunk([1] * new, prefix, 0, [0] * -(-(prefix + new) // page_size))
            for new, prefix in shape]


@torch.inference_mode()
def warm_up(runner, max_tokens: int | None = None) -> int:
    """Run the warm-up forwards of at most `max_tokens` tokens each (a step's prefill
    budget); returns how many ran."""
    done = 0
    with compile_log.quiet():
        for shape in shapes_for(max_tokens):
            batch = build_forward_batch(chunks_for(shape, runner.kv_pool.page_size),
                                        runner.kv_pool, runner.state_pool, runner.device)
            runner.model(batch)
            done += 1
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    return done
