"""The CUDA-graph static inputs, run eagerly on CPU: a decode batch (or a verify of draft
chains) padded to a captured size gives the logits and pool contents of the plain forward,
padding rows touch only slot 0 / page 0, and a smaller batch after a larger one leaves no
stale row behind. (The graph
capture itself runs on the GPU: tests/gpu/test_gpu_cuda_graph.py.)"""

from __future__ import annotations

import pytest
import torch

from qnext.worker.runtime.cuda_graph import graph_batch_sizes
from qnext.worker.runtime.inputs import SeqChunk, build_forward_batch, build_verify_batch
from qnext.worker.runtime.spec_states import SpecStateBuffers
from tests.models.harness import Harness, copy_pools, make_config, restore_pools


def _decode_batch(h, seqs, tokens, snapshot=None):
    chunks = [SeqChunk([t], s.num_cached, s.slot, s.pages,
                       snapshot.get(i) if snapshot else None,
                       s.num_cached + 1 if snapshot and i in snapshot else 0)
              for i, (s, t) in enumerate(zip(seqs, tokens))]
    return build_forward_batch(chunks, h.runner.kv_pool, h.runner.state_pool, "cpu")


def _plain_vs_static(h, graphs, batch) -> None:
    """The plain forward of `batch`, then (pools restored) the static-buffer run: the same
    logits and hidden states (up to the matmul blocking of another batch size), and the same
    pools except page 0 (token slots 0..3) and slot 0, which absorb the padding rows."""
    before = copy_pools(h.runner)
    want = h.runner.model(batch)
    after = copy_pools(h.runner)
    restore_pools(h.runner, before)
    assert graphs.can_run(batch)
    got = graphs.run(batch)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    for real, graphed, skip in zip(after, copy_pools(h.runner), (4, 4, 1, 1)):
        torch.testing.assert_close(graphed[:, skip:], real[:, skip:], rtol=1e-5, atol=1e-5)


def test_graph_batch_sizes():
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert graph_batch_sizes(256)[-3:] == [240, 248, 256]


def test_padded_static_decode_equals_the_plain_forward(tiny_checkpoint):
    h = Harness(make_config(tiny_checkpoint("tiny"), page_size=4), max_tokens=32, max_seqs=12)
    seqs = [h.new_seq() for _ in range(6)]
    h.step([(s, [3 + i, 9, 4 + i, 7][: 1 + i % 4]) for i, s in enumerate(seqs)])
    graphs = h.runner.make_graphs(eager=True)
    for bs, snapshot in ((5, None), (3, {1: 11}), (6, None)):
        batch = _decode_batch(h, seqs[:bs], [20 + i for i in range(bs)], snapshot)
        _plain_vs_static(h, graphs, batch)
        for seq in seqs[:bs]:
            seq.num_cached += 1


def test_prefill_and_oversized_batches_stay_eager(tiny_checkpoint):
    h = Harness(make_config(tiny_checkpoint("tiny")), max_tokens=16, max_seqs=4)
    seq = h.new_seq()
    chunks = [SeqChunk([1, 2, 3], 0, seq.slot, seq.pages)]
    prefill = build_forward_batch(chunks, h.runner.kv_pool, h.runner.state_pool, "cpu")
    graphs = h.runner.make_graphs(eager=True)
    assert not graphs.can_run(prefill)
    assert graphs.sizes[-1] == h.runner.state_pool.num_slots


@pytest.mark.parametrize("page_size", [1, 4])
@torch.inference_mode()
def test_padded_static_verify_equals_the_plain_verify(tiny_checkpoint, page_size):
    """A verify of draft chains through the static buffers, padded to a captured size: the
    logits, the per-step states of the real rows and the pools of the plain verify forward;
    padding writes only page 0 / slot 0 and buffer rows past the batch."""
    h = Harness(make_config(tiny_checkpoint("tiny"), page_size=page_size), max_tokens=48,
                max_seqs=8)
    n = 4
    seqs = [h.new_seq() for _ in range(5)]
    h.step([(s, list(range(5 + 7 * i, 12 + 9 * i))) for i, s in enumerate(seqs)])
    plain = SpecStateBuffers(h.runner.state_pool, rows=8, num_draft=n)
    static = SpecStateBuffers(h.runner.state_pool, rows=8, num_draft=n)
    graphs = h.runner.make_graphs(eager=True, n=n, spec_states=static)
    for bs in (5, 3, 1):  # 5 pads to 8; 3 after 5 must not see 5's stale rows
        chunks = [SeqChunk([40 + 3 * b + t for t in range(n)], s.num_cached, s.slot, s.pages)
                  for b, s in enumerate(seqs[:bs])]
        batch = build_verify_batch(chunks, h.runner.kv_pool, h.runner.state_pool,
                                   plain.rows(bs), "cpu")
        _plain_vs_static(h, graphs, batch)
        torch.testing.assert_close(static.conv_all[:, :bs], plain.conv_all[:, :bs])
        torch.testing.assert_close(static.ssm_all[:, :bs], plain.ssm_all[:, :bs],
                                   rtol=1e-5, atol=1e-5)


def test_verify_graphs_take_only_chains_of_their_length(tiny_checkpoint):
    h = Harness(make_config(tiny_checkpoint("tiny")), max_tokens=32, max_seqs=4)
    seq = h.new_seq()
    h.step([(seq, [1, 2, 3])])
    buffers = SpecStateBuffers(h.runner.state_pool, rows=4, num_draft=3)
    graphs = h.runner.make_graphs(eager=True, n=3, spec_states=buffers)

    def verify(drafts, parents=None):
        chunks = [SeqChunk(drafts, seq.num_cached, seq.slot, seq.pages)]
        return build_verify_batch(chunks, h.runner.kv_pool, h.runner.state_pool,
                                  buffers.rows(1), "cpu", parents)

    assert graphs.can_run(verify([4, 5, 6]))
    assert not graphs.can_run(verify([4, 5]))  # another draft length
    assert not graphs.can_run(verify([4, 5, 6], [[-1, 0, 0]]))  # a tree
    decode = build_forward_batch([SeqChunk([4], seq.num_cached, seq.slot, seq.pages)],
                                 h.runner.kv_pool, h.runner.state_pool, "cpu")
    assert not graphs.can_run(decode)
    assert not h.runner.make_graphs(eager=True).can_run(verify([4, 5, 6]))
    with pytest.raises(ValueError, match="spec_states"):
        h.runner.make_graphs(eager=True, n=3)
