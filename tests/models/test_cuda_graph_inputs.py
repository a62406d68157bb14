"""The CUDA-graph decode path's static inputs, run eagerly on CPU: a decode batch padded to a
captured size gives the logits and pool contents of the plain forward, padding rows touch only
slot 0 / page 0, and a smaller batch after a larger one leaves no stale row behind. (The graph
capture itself runs on the GPU: tests/gpu/test_gpu_cuda_graph.py.)"""

from __future__ import annotations

import torch

from qnext.worker.runtime.cuda_graph import graph_batch_sizes
from qnext.worker.runtime.inputs import SeqChunk, build_forward_batch
from tests.models.harness import Harness, copy_pools, make_config, restore_pools


def _decode_batch(h, seqs, tokens, snapshot=None):
    chunks = [SeqChunk([t], s.num_cached, s.slot, s.pages,
                       snapshot.get(i) if snapshot else None,
                       s.num_cached + 1 if snapshot and i in snapshot else 0)
              for i, (s, t) in enumerate(zip(seqs, tokens))]
    return build_forward_batch(chunks, h.runner.kv_pool, h.runner.state_pool, "cpu")


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
        before = copy_pools(h.runner)
        want, _ = h.runner.model(batch)
        after = copy_pools(h.runner)
        restore_pools(h.runner, before)
        assert graphs.can_run(batch)
        got, _ = graphs.run(batch)
        # equal up to the matmul blocking of another batch size
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # page 0 (token slots 0..3) and slot 0 absorb the padding rows' writes
        for real, graphed, skip in zip(after, copy_pools(h.runner), (4, 4, 1, 1)):
            torch.testing.assert_close(graphed[:, skip:], real[:, skip:], rtol=1e-5, atol=1e-5)
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
