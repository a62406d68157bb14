"""qnext's Qwen3-Next vs transformers' Qwen3NextForCausalLM on tiny random checkpoints (fp32).

Every path of the serving forward is checked against the reference's full-sequence logits:
whole-prompt prefill, chunked prefill through the pools, token-by-token decode through the state
pool, and batches mixing sequences of different lengths and phases.
"""

from __future__ import annotations

import pytest
import torch

from tests.models.harness import Harness, hf_logits, hf_model, make_config, random_prompt

ATOL = 1e-4
PRESETS = ["tiny", "tiny-b"]


@pytest.fixture(scope="module", params=PRESETS)
def setup(request, tiny_checkpoint):
    path = tiny_checkpoint(request.param)
    cfg = make_config(path, page_size=4 if request.param == "tiny-b" else 1)
    return Harness(cfg), hf_model(path), cfg.model.vocab_size


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    err = (ours - ref).abs().max().item()
    assert err < ATOL, f"max-abs logits error {err:.2e}"


def test_whole_prompt_prefill(setup):
    harness, hf, vocab = setup
    prompt = random_prompt(torch.Generator().manual_seed(1), 150, vocab)
    ours = harness.step([(harness.new_seq(), prompt)], all_logits=True)
    _close(ours, hf_logits(hf, prompt))


def test_chunked_prefill(setup):
    harness, hf, vocab = setup
    prompt = random_prompt(torch.Generator().manual_seed(2), 140, vocab)
    ref, seq, start = hf_logits(hf, prompt), harness.new_seq(), 0
    for end in (5, 6, 70, 133, 140):  # chunks of 5, 1, 64, 63, 7 tokens
        ours = harness.step([(seq, prompt[start:end])], all_logits=True)
        _close(ours, ref[start:end])
        start = end


def test_token_by_token_decode(setup):
    harness, hf, vocab = setup
    prompt = random_prompt(torch.Generator().manual_seed(3), 40, vocab)
    ref, seq = hf_logits(hf, prompt), harness.new_seq()
    harness.step([(seq, prompt[:3])])
    for i in range(3, len(prompt)):
        _close(harness.step([(seq, [prompt[i]])])[0], ref[i])


def test_batch_of_different_lengths(setup):
    harness, hf, vocab = setup
    gen = torch.Generator().manual_seed(4)
    prompts = [random_prompt(gen, n, vocab) for n in (1, 7, 64, 65, 130)]
    seqs = [harness.new_seq() for _ in prompts]
    ours = harness.step(list(zip(seqs, prompts)), all_logits=True)
    _close(ours, torch.cat([hf_logits(hf, p) for p in prompts]))


def test_mixed_prefill_and_decode_batch(setup):
    harness, hf, vocab = setup
    gen = torch.Generator().manual_seed(5)
    prompts = [random_prompt(gen, n, vocab) for n in (20, 33, 9)]
    seqs = [harness.new_seq() for _ in prompts]
    harness.step([(seqs[0], prompts[0][:19]), (seqs[1], prompts[1][:10])])
    # seq 0 decodes its last token, seq 1 prefills a middle chunk, seq 2 starts from scratch
    work = [(seqs[0], prompts[0][19:]), (seqs[1], prompts[1][10:33]), (seqs[2], prompts[2])]
    ours = harness.step(work)
    _close(ours, torch.stack([hf_logits(hf, p)[-1] for p in prompts]))


def test_greedy_matches_generate(setup):
    harness, hf, vocab = setup
    prompt = random_prompt(torch.Generator().manual_seed(6), 12, vocab)
    ids = torch.tensor([prompt])
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32,
                      min_new_tokens=32, do_sample=False)[0, len(prompt):].tolist()
    seq = harness.new_seq()
    logits = harness.step([(seq, prompt)])
    ours = []
    for _ in range(32):
        ours.append(int(logits[0].argmax()))
        logits = harness.step([(seq, [ours[-1]])])
    assert ours == ref
    assert len(set(ours)) > 1, "degenerate continuation proves little"
