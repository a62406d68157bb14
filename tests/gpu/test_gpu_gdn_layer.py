"""The Gated DeltaNet layer's decode step through its kernels — conv update, delta rule, and at
one row the input projection's GEMV with the conv inside and the output projection's GEMV with
the gated norm inside (layers/gated_delta_net.py) —
gives the logits and states of the same layer on the torch references, in the whole tiny
model. On the GPU, or on CPU tensors under TRITON_INTERPRET=1: the layer is switched between
the two by its `use_triton` (the attention and MoE layers stay on their references)."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS

pytestmark = KERNEL_MARKS


@pytest.mark.parametrize("rows", [1, 3])
def test_gdn_decode_through_the_kernels_equals_the_references(tiny_checkpoint, monkeypatch,
                                                              rows):
    import qnext.kernels.gemv as gemv_module
    import qnext.worker.layers.gated_delta_net as gdn_layer
    import qnext.worker.layers.linear as linear
    from qnext.worker.runtime.inputs import SeqChunk
    from tests.models.harness import Harness, make_config, random_prompt

    harness = Harness(make_config(tiny_checkpoint("tiny"), device=DEVICE), max_tokens=400)
    gen = torch.Generator().manual_seed(rows)
    prompts = [random_prompt(gen, 20 + 7 * i, 384) for i in range(rows)]
    results, normed = [], []
    real_gemv = gemv_module.gemv

    def gemv_spy(x, weight, norm=None, conv=None):  # the real kernel; notes what it fused
        normed.append((norm is not None, conv is not None))
        return real_gemv(x, weight, norm, conv)

    for kernels in (False, True):
        seqs = [harness.new_seq() for _ in prompts]
        harness.runner.forward([SeqChunk(p, 0, s.slot, s.pages) for p, s in zip(prompts, seqs)])
        monkeypatch.setattr(gdn_layer, "use_triton", lambda x, k=kernels: k)
        monkeypatch.setattr(linear, "use_triton", lambda x, k=kernels: k)
        monkeypatch.setattr(gemv_module, "gemv", gemv_spy)
        logits, _ = harness.runner.forward([SeqChunk([5], len(p), s.slot, s.pages)
                                            for p, s in zip(prompts, seqs)])
        monkeypatch.undo()
        pool = harness.runner.state_pool
        results.append((logits.double(), [states[:, s.slot].clone() for s in seqs
                                          for states in (pool.ssm_states, pool.conv_states)]))
    (want, want_states), (got, got_states) = results
    # one row: every GDN layer's input projection took the conv and its output projection the
    # norm (QNEXT_DENSE_GEMV's default); more rows: neither
    fused = (normed.count((False, True)), normed.count((True, False)))
    assert fused == ((3, 3) if rows == 1 else (0, 0)), normed
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()
    for a, b in zip(got_states, want_states):
        assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()
