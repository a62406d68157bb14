"""Snapshot slots through the whole model: one forward leaves the recurrent state after the
first N tokens in an extra slot (prefix-cache tracking), equal to a run of just those N tokens,
and a later request resumes from it. Also `build_forward_batch`'s snapshot validation."""

from __future__ import annotations

import pytest
import torch

from qnext.worker.runtime.inputs import SeqChunk, build_forward_batch
from tests.models.harness import Harness, make_config, random_prompt

TOL = {"float64": 1e-12, "float32": 1e-5}


@pytest.fixture(scope="module", params=["float64", "float32"])
def setup(request, tiny_checkpoint):
    cfg = make_config(tiny_checkpoint("tiny-b"), dtype=request.param, page_size=4)
    return Harness(cfg, max_tokens=160, max_seqs=16), cfg.model.vocab_size, TOL[request.param]


def _same_state(harness: Harness, slot_a: int, slot_b: int, tol: float) -> None:
    """Conv and SSM states of two slots agree in every GDN layer (max-abs or relative)."""
    pool = harness.runner.state_pool
    for states in (pool.conv_states, pool.ssm_states):
        a, b = states[:, slot_a].double(), states[:, slot_b].double()
        err = (a - b).abs().max().item()
        assert err <= tol * max(1.0, b.abs().max().item()), f"state error {err:.2e}"
        assert b.abs().sum() > 0


def _forward(harness: Harness, chunks: list[SeqChunk]) -> torch.Tensor:
    logits, _ = harness.runner.forward(chunks, all_logits=True)
    return logits.double()


def test_prefill_snapshot_equals_prefix_run_and_resumes(setup):
    harness, vocab, tol = setup
    prompt = random_prompt(torch.Generator().manual_seed(21), 150, vocab)
    seq, plain, prefix = harness.new_seq(), harness.new_seq(), harness.new_seq()
    snap = harness.new_seq().slot
    ours = _forward(harness, [SeqChunk(prompt, 0, seq.slot, seq.pages, snapshot_slot=snap,
                                       snapshot_len=128)])
    assert torch.equal(ours, _forward(harness, [SeqChunk(prompt, 0, plain.slot, plain.pages)]))
    _same_state(harness, seq.slot, plain.slot, 0.0)  # the snapshot changes nothing else
    _forward(harness, [SeqChunk(prompt[:128], 0, prefix.slot, prefix.pages)])
    _same_state(harness, snap, prefix.slot, tol)
    # a request sharing the first 128 tokens (and their KV pages) resumes from the snapshot
    resumed = _forward(harness, [SeqChunk(prompt[128:], 128, snap, seq.pages)])
    assert (resumed - ours[128:]).abs().max().item() <= 10 * tol
    _same_state(harness, snap, seq.slot, tol)


def test_snapshots_in_mixed_prefill_and_decode_steps(setup):
    harness, vocab, tol = setup
    gen = torch.Generator().manual_seed(22)
    prompts = [random_prompt(gen, n, vocab) for n in (40, 9, 70)]
    a, b, c = (harness.new_seq() for _ in prompts)
    snaps = [harness.new_seq().slot for _ in range(3)]
    _forward(harness, [SeqChunk(prompts[0][:39], 0, a.slot, a.pages),
                       SeqChunk(prompts[1][:8], 0, b.slot, b.pages)])
    # prefill batch: a 1-token continuation and a resumed chunk snapshot at their ends (t == L)
    _forward(harness, [SeqChunk(prompts[0][39:], 39, a.slot, a.pages, snaps[0], 40),
                       SeqChunk(prompts[1][8:], 8, b.slot, b.pages, snaps[1], 9),
                       SeqChunk(prompts[2], 0, c.slot, c.pages, snaps[2], 64)])
    _same_state(harness, snaps[0], a.slot, 0.0)
    _same_state(harness, snaps[1], b.slot, 0.0)
    c_prefix = harness.new_seq()
    _forward(harness, [SeqChunk(prompts[2][:64], 0, c_prefix.slot, c_prefix.pages)])
    _same_state(harness, snaps[2], c_prefix.slot, tol)
    # decode step: only b takes a snapshot; a's old snapshot stays as it was
    kept = harness.runner.state_pool.ssm_states[:, snaps[0]].clone()
    _forward(harness, [SeqChunk([1], 40, a.slot, a.pages), SeqChunk([2], 9, b.slot, b.pages,
                                                                    snaps[2], 10)])
    _same_state(harness, snaps[2], b.slot, 0.0)
    assert torch.equal(harness.runner.state_pool.ssm_states[:, snaps[0]], kept)
    again = harness.new_seq()
    _forward(harness, [SeqChunk(prompts[1] + [2], 0, again.slot, again.pages)])
    _same_state(harness, snaps[2], again.slot, tol)


@pytest.mark.parametrize("changes,message", [
    ({"snapshot_slot": 9, "snapshot_len": 4}, "snapshot_len 4"),  # inside the cached prefix
    ({"snapshot_slot": 9, "snapshot_len": 11}, "snapshot_len 11"),  # past the new tokens
    ({"snapshot_len": 6}, "snapshot_slot is None"),
    ({"snapshot_slot": -1, "snapshot_len": 6}, "negative"),
    ({"snapshot_slot": 2, "snapshot_len": 6}, "working state slots"),
])
def test_build_forward_batch_checks_snapshots(setup, changes, message):
    harness, _, _ = setup
    pools = harness.runner.kv_pool, harness.runner.state_pool
    base = dict(token_ids=[1] * 6, prefix_len=4, state_slot=1, page_ids=[1, 2, 3])
    other = SeqChunk([1], 0, 2, [4])
    with pytest.raises(ValueError, match=message):
        build_forward_batch([SeqChunk(**{**base, **changes}), other], *pools, "cpu")
    twice = [SeqChunk(**base, snapshot_slot=9, snapshot_len=10),
             SeqChunk([1], 0, 2, [4], snapshot_slot=9, snapshot_len=1)]
    with pytest.raises(ValueError, match="differ from each other"):
        build_forward_batch(twice, *pools, "cpu")
    batch = build_forward_batch([SeqChunk(**base), other], *pools, "cpu")
    assert batch.snapshot_slots is None and batch.snapshot_offsets is None
    batch = build_forward_batch([SeqChunk(**base, snapshot_slot=9, snapshot_len=8), other],
                                *pools, "cpu")
    assert batch.snapshot_slots.tolist() == [9, -1] and batch.snapshot_offsets.tolist() == [4, 0]
