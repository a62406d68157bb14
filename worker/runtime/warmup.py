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

from qnext.worker.runtime.inputs import SeqChunk, build_forward_batch

# (new tokens, cached prefix) per sequence of each warm-up forward. Triton keys a compiled
# kernel on every integer argument's class at once, so the forwards cross the classes of the
# token count (odd / a multiple of 16) with those of the sequence count (one / several): one
# odd prompt, a batch of odd total length, a batch of aligned total length, a long aligned
# prompt (also the MoE prefill tiles), and an eager decode batch
SHAPES = (((17, 0),), ((16, 0), (17, 0), (33, 0)), ((16, 0), (48, 0)), ((2048, 0),),
          ((1, 5), (1, 9)))


def chunks_for(shape: tuple[tuple[int, int], ...], page_size: int) -> list[SeqChunk]:
    """Sequences on slot 0 and page 0 only, token id 1."""
    return [SeqChunk([1] * new, prefix, 0, [0] * -(-(prefix + new) // page_size))
            for new, prefix in shape]


@torch.inference_mode()
def warm_up(runner, max_tokens: int | None = None) -> int:
    """Run the warm-up forwards of at most `max_tokens` tokens each (the chunked-prefill
    size); returns how many ran."""
    done = 0
    for shape in SHAPES:
        if max_tokens is not None and sum(new for new, _ in shape) > max_tokens:
            continue
        batch = build_forward_batch(chunks_for(shape, runner.kv_pool.page_size),
                                    runner.kv_pool, runner.state_pool, runner.device)
        runner.model(batch)
        done += 1
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    return done
