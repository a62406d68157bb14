"""The MTP draft head runs through its own one-layer KV pool: a whole-sequence forward equals
the token-by-token forward, and it really uses both inputs (next-token embedding and hidden)."""

from __future__ import annotations

import torch

from qnext.worker.runtime.inputs import SeqChunk, build_forward_batch
from qnext.worker.runtime.model_runner import build_model, build_mtp, make_pools
from tests.models.harness import make_config


@torch.inference_mode()
def test_mtp_whole_sequence_equals_stepwise(tiny_checkpoint):
    cfg = make_config(tiny_checkpoint("tiny"))
    target, mtp = build_model(cfg), build_mtp(cfg)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.model.vocab_size, (20,), generator=gen).tolist()
    hidden = torch.randn(20, cfg.model.hidden_size, generator=gen)
    pages = list(range(1, 21))

    def run(chunk, prev_hidden, pools, all_logits=False):
        batch = build_forward_batch([chunk], *pools, "cpu", all_logits)
        return mtp(batch, prev_hidden, target.model.embed_tokens, target.lm_head)[0]

    whole = run(SeqChunk(ids, 0, 1, pages), hidden, make_pools(cfg, 32, 2, 1), True)
    pools = make_pools(cfg, 32, 2, 1)
    steps = torch.cat([run(SeqChunk([t], i, 1, pages), hidden[i:i + 1], pools)
                       for i, t in enumerate(ids)])
    assert (whole - steps).abs().max() < 1e-5
    # a different hidden input changes the draft logits: the hidden branch is wired in
    other = run(SeqChunk(ids, 0, 1, pages), hidden.flip(0), make_pools(cfg, 32, 2, 1), True)
    assert (other - whole).abs().max() > 1e-2
