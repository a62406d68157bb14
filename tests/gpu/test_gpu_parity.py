"""The parity checks on CUDA: fp32 logits within 1e-4 of transformers (run on the same GPU), and
bf16 weights/activations (fp32 SSM state) against the fp32 reference, through prefill, chunked
prefill, decode and a mixed batch. Run on an H100/H200.

bf16 bound: 2e-2 relative logits error, or twice transformers' own bf16 error when that is larger.
Random tiny models are ill-conditioned (MoE top-k flips under bf16 rounding, the GDN gated norm
amplifies near-zero outputs): transformers in bf16 is itself 2e-2..1.8e-1 away from its fp32
logits on them (docs/validation.md), so a fixed 2e-2 would fail the reference too.
"""

from __future__ import annotations

import pytest
import torch

from tests.models.harness import Harness, hf_logits, hf_model, make_config, random_prompt
from tests.unit.kernels.helpers import rel_err

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module", params=["tiny", "tiny-b"])
def setup(request, tiny_checkpoint):
    path = tiny_checkpoint(request.param)
    return path, hf_model(path, device="cuda"), request.param


def _workload(harness: Harness, vocab: int) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Returns per-step logits and, for each, which prompt prefix they belong to."""
    gen = torch.Generator().manual_seed(0)
    prompts = [random_prompt(gen, n, vocab) for n in (1, 37, 64, 130)]
    seqs = [harness.new_seq() for _ in prompts]
    logits = [harness.step([(s, p[:-3] or p) for s, p in zip(seqs, prompts)])]
    for i in (3, 2, 1):  # three decode steps for every sequence that has tokens left
        work = [(s, [p[-i]]) for s, p in zip(seqs, prompts) if len(p) > 3]
        logits.append(harness.step(work))
    return logits, prompts


def _reference(hf, prompts: list[list[int]]) -> list[torch.Tensor]:
    full = [hf_logits(hf, p) for p in prompts]
    steps = [torch.stack([f[-4] if len(p) > 3 else f[-1] for f, p in zip(full, prompts)])]
    for i in (3, 2, 1):
        steps.append(torch.stack([f[-i] for f, p in zip(full, prompts) if len(p) > 3]))
    return steps


def test_fp32_parity_on_gpu(setup):
    path, hf, preset = setup
    harness = Harness(make_config(path, device="cuda", page_size=4 if preset == "tiny-b" else 1))
    ours, prompts = _workload(harness, hf.config.vocab_size)
    for step, (a, b) in enumerate(zip(ours, _reference(hf, prompts))):
        err = (a - b).abs().max().item()
        print(f"fp32 step {step}: max-abs {err:.2e}")
        assert err < 1e-4, f"step {step}: fp32 max-abs error {err:.2e}"


def test_bf16_parity_on_gpu(setup):
    path, hf, _ = setup
    harness = Harness(make_config(path, dtype="bfloat16", device="cuda", page_size=16))
    ours, prompts = _workload(harness, hf.config.vocab_size)
    hf_bf16 = _reference(hf_model(path, dtype=torch.bfloat16, device="cuda"), prompts)
    for step, (a, b, c) in enumerate(zip(ours, _reference(hf, prompts), hf_bf16)):
        rel, hf_rel = rel_err(a, b), rel_err(c, b)
        print(f"bf16 step {step}: qnext {rel:.3e}  transformers-bf16 {hf_rel:.3e}")
        assert rel <= max(2e-2, 2 * hf_rel), f"step {step}: bf16 relative error {rel:.3e}"
