"""Speculative verify through the model (CPU references): one forward over n draft tokens per
sequence gives, for every draft token, the logits of decoding the tokens one by one along its
path (chains and trees), keeps every step's recurrent state apart without touching the pool,
and `commit` puts any accepted step's state into the slot."""

from __future__ import annotations

import pytest
import torch

from qnext.worker.runtime.inputs import SeqChunk, build_verify_batch, draft_depths
from qnext.worker.runtime.spec_states import SpecStateBuffers
from tests.models.harness import Harness, copy_pools, make_config, restore_pools

TOL = dict(rtol=1e-4, atol=1e-4)


def _setup(tiny_checkpoint, page_size: int = 1):
    h = Harness(make_config(tiny_checkpoint("tiny"), page_size=page_size), max_tokens=64,
                max_seqs=6)
    seqs = [h.new_seq() for _ in range(3)]
    h.step([(s, list(range(5 + 7 * i, 5 + 7 * i + 3 + 9 * i))) for i, s in enumerate(seqs)])
    return h, seqs


@torch.inference_mode()
def _verify(h, seqs, drafts, parents=None):
    spec = SpecStateBuffers(h.runner.state_pool, rows=len(seqs), num_draft=len(drafts[0]))
    chunks = [SeqChunk(d, s.num_cached, s.slot, s.pages) for s, d in zip(seqs, drafts)]
    batch = build_verify_batch(chunks, h.runner.kv_pool, h.runner.state_pool, spec, "cpu",
                               parents)
    logits, _ = h.runner.model(batch)
    return logits.view(len(seqs), len(drafts[0]), -1), spec


def _decode_path(h, seq, tokens) -> tuple[list[torch.Tensor], list[tuple]]:
    """Decode `tokens` one by one; logits and (conv, ssm) slot states after each step."""
    logits, states = [], []
    pool = h.runner.state_pool
    for token in tokens:
        logits.append(h.step([(seq, [token])])[0])
        states.append((pool.conv_states[:, seq.slot].clone(),
                       pool.ssm_states[:, seq.slot].clone()))
    return logits, states


@pytest.mark.parametrize("page_size", [1, 4])
def test_chain_verify_equals_decoding_one_by_one(tiny_checkpoint, page_size):
    h, seqs = _setup(tiny_checkpoint, page_size)
    drafts = [[40 + 3 * i + t for t in range(4)] for i in range(3)]
    before = copy_pools(h.runner)
    got, spec = _verify(h, seqs, drafts)
    for saved, now in zip(before[2:], copy_pools(h.runner)[2:]):
        assert torch.equal(saved, now)  # verify never writes the state pool
    prefix = [s.num_cached for s in seqs]
    steps = {}
    for b, (seq, draft) in enumerate(zip(seqs, drafts)):
        want, steps[b] = _decode_path(h, seq, draft)
        for t in range(4):
            torch.testing.assert_close(got[b, t], want[t], **TOL)
            torch.testing.assert_close(spec.conv_all[:, b, t], steps[b][t][0], **TOL)
            torch.testing.assert_close(spec.ssm_all[:, b, t], steps[b][t][1], **TOL)
    restore_pools(h.runner, before)  # accept 3, 1 and 4 tokens: commit steps 2, 0, 3
    accepted = torch.tensor([2, 0, 3])
    spec.commit(h.runner.state_pool, torch.tensor([s.slot for s in seqs]), accepted)
    pool = h.runner.state_pool
    for b, seq in enumerate(seqs):
        conv, ssm = steps[b][int(accepted[b])]
        assert torch.equal(pool.conv_states[:, seq.slot], spec.conv_all[:, b, accepted[b]])
        torch.testing.assert_close(pool.ssm_states[:, seq.slot], ssm, **TOL)
        torch.testing.assert_close(pool.conv_states[:, seq.slot], conv, **TOL)
    assert prefix == [s.num_cached - 4 for s in seqs]


def test_tree_verify_follows_each_tokens_path(tiny_checkpoint):
    h, seqs = _setup(tiny_checkpoint)
    parents = [[-1, 0, 0, 1, 2, 1], [-1, 0, 1, 2, 3, 4], [-1, 0, 0, 0, 3, 3]]
    drafts = [[60 + 5 * b + t for t in range(6)] for b in range(3)]
    before, prefix = copy_pools(h.runner), [s.num_cached for s in seqs]
    got, spec = _verify(h, seqs, drafts, parents)
    for b, seq in enumerate(seqs):
        for t in range(6):
            path = [t]
            while parents[b][path[-1]] >= 0:
                path.append(parents[b][path[-1]])
            restore_pools(h.runner, before)
            seq.num_cached = prefix[b]
            want, states = _decode_path(h, seq, [drafts[b][i] for i in reversed(path)])
            torch.testing.assert_close(got[b, t], want[-1], **TOL)
            torch.testing.assert_close(spec.ssm_all[:, b, t], states[-1][1], **TOL)
            torch.testing.assert_close(spec.conv_all[:, b, t], states[-1][0], **TOL)


def test_draft_depths_and_bad_batches(tiny_checkpoint):
    assert draft_depths([-1, 0, 0, 1, 3]) == [0, 1, 1, 2, 3]
    with pytest.raises(ValueError, match="parent"):
        draft_depths([-1, 1])
    h, seqs = _setup(tiny_checkpoint)
    with pytest.raises(ValueError, match="same number of draft tokens"):
        _verify(h, seqs[:2], [[1, 2], [3]])
