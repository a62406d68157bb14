"""Speculative decoding (NEXTN chains and trees) in the engine gives exactly the tokens of decoding
without it — greedy and seeded sampling, batches, chunked prefill, preemption, prefix-cache
hits — and every page and slot comes back.

Two draft sources: the checkpoint's MTP head (random weights: proposals are mostly rejected),
and an oracle that proposes the reference continuation with one token corrupted at a varying
depth, so every accept length 0..k, finishes inside the kept tokens and commits of every step
are exercised through the real verify, acceptance, commit and page bookkeeping.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from qnext.worker.engine import Engine
from qnext.worker.sched.request import SamplingParams
from qnext.worker.spec_config import SpecConfig
from tests.engine.helpers import (
    assert_pools_at_baseline,
    engine_config,
    random_prompts,
    run_with_changes,
)

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=14, ignore_eos=True)
SAMPLED = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=14, seed=5)


def _engine(path, steps: int | None = None, topk: int | None = None,
            draft_tokens: int | None = None, **kwargs) -> Engine:
    cfg = engine_config(path, **kwargs)
    return Engine(replace(cfg, spec=SpecConfig("NEXTN", num_steps=steps, eagle_topk=topk,
                                               num_draft_tokens=draft_tokens)))


def _oracle(engine: Engine, want: dict[str, list[int]]) -> None:
    """Proposals from the reference continuation with the token at a varying depth replaced.
    Chains: that continuation. Trees: at each depth a wrong sibling first, then the reference
    token (the kept path skips tree indices, so its K/V must be compacted)."""
    drafter, calls = engine.executor.drafter, [0]
    rid = {seq_id: f"r{seq_id}" for seq_id in range(len(want))}
    previous = _record_previous(engine.executor)

    def proposals(seq_id: int) -> tuple[list[int], list[int]]:
        drafter.proposed.pop(seq_id, None)
        seq = engine.scheduler.seqs[seq_id]
        done = len(seq.output_ids) + _in_flight(previous[0], seq_id)
        ref = want[rid[seq_id]][done:] + [0] * drafter.k
        calls[0] += 1
        bad = (calls[0] + seq_id) % (drafter.k + 1)
        ref = [t if i != bad else (t + 1) % 384 for i, t in enumerate(ref[:drafter.k])]
        if drafter.topk == 1:
            return ref, list(range(drafter.k))
        tokens, parents, right = [], [], 0
        for t in ref:
            tokens += [(t + 7) % 384, t]
            parents += [right, right]
            right = len(tokens)
        return tokens[:drafter.k], parents[:drafter.k]

    drafter.proposals = proposals


def _record_previous(executor) -> list:
    """[the step in flight when the executor's current launch began] (the overlap loop's
    `previous`; None in the normal loop), kept up to date by wrapping `launch`."""
    launch, previous = executor.launch, [None]

    def recording(plan, prev=None):
        previous[0] = prev
        return launch(plan, prev)

    executor.launch = recording
    return previous


def _in_flight(previous, seq_id: int) -> int:
    """Tokens the step in flight emits for the sequence (the test reads them early)."""
    if previous is None:
        return 0
    if previous.verified and seq_id in previous.verified:
        return int(previous.acc.num_accepted[previous.verified.index(seq_id)]) + 1
    return int(seq_id in previous.seq_ids)


def _reference(path, prompts, params, **kwargs) -> dict[str, list[int]]:
    return run_with_changes(Engine(engine_config(path, **kwargs)), prompts, params)


@pytest.mark.parametrize("steps", [1, 3])
def test_static_verify_buffers_give_the_tokens_of_plain_decoding(tiny_checkpoint, steps):
    """The CUDA-graph verify path (static buffers, padded batch sizes; captured on the GPU,
    tests/gpu/test_gpu_spec.py) run eagerly on CPU inside the engine: same tokens."""
    path = tiny_checkpoint("tiny")
    prompts = random_prompts(6, 1, 40, 384, seed=steps)
    want = _reference(path, prompts, GREEDY)
    engine = _engine(path, steps)
    ex = engine.executor
    ex.verify_graphs = engine.runner.make_graphs(eager=True, n=ex.n, spec_states=ex.buffers,
                                                 max_bs=ex.buffers.conv_all.shape[1])
    _oracle(engine, want)
    assert run_with_changes(engine, prompts, GREEDY) == want
    assert ex.verify_graphs.runs == ex.counters["verify_steps"] > 0


SETTINGS = [(1, 1, None), (3, 1, None), (5, 1, None), (2, 2, 4), (3, 2, 7), (2, 3, 6)]


@pytest.mark.parametrize("steps,topk,draft_tokens", SETTINGS)
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_oracle_drafts_give_the_tokens_of_plain_decoding(tiny_checkpoint, steps, topk,
                                                         draft_tokens, params):
    path = tiny_checkpoint("tiny")
    prompts = random_prompts(6, 1, 40, 384, seed=steps + topk)
    want = _reference(path, prompts, params)
    engine = _engine(path, steps, topk, draft_tokens)
    _oracle(engine, want)
    assert run_with_changes(engine, prompts, params) == want
    stats = engine.stats()["spec"]
    assert 0 < stats["accepted"] < stats["proposed"]  # some kept, some rejected
    assert_pools_at_baseline(engine)


@pytest.mark.parametrize("steps", [1, 3, 5])
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_overlap_loop_gives_the_tokens_of_plain_decoding(tiny_checkpoint, steps, params):
    """Chains in the overlap loop: each verify is planned while the previous one is in
    flight (its root, prefix and sampling counter come from the device)."""
    from qnext.worker.engine.loop import OverlapLoop

    path = tiny_checkpoint("tiny")
    prompts = random_prompts(6, 1, 40, 384, seed=steps + 7)
    want = _reference(path, prompts, params)
    engine = _engine(path, steps, overlap=True)
    assert isinstance(engine.loop, OverlapLoop)
    _oracle(engine, want)
    assert run_with_changes(engine, prompts, params) == want
    stats = engine.stats()["spec"]
    assert 0 < stats["accepted"] < stats["proposed"]
    assert_pools_at_baseline(engine)


@pytest.mark.parametrize("steps,topk,draft_tokens", [(3, 1, None), (3, 2, 6)])
def test_mtp_head_drafts_give_the_tokens_of_plain_decoding(tiny_checkpoint, steps, topk,
                                                           draft_tokens):
    path = tiny_checkpoint("tiny")
    prompts = random_prompts(5, 1, 50, 384, seed=1)
    want = _reference(path, prompts, GREEDY)
    engine = _engine(path, steps, topk, draft_tokens)
    assert run_with_changes(engine, prompts, GREEDY) == want
    assert engine.stats()["spec"]["verify_seqs"] > 0
    assert_pools_at_baseline(engine)


@pytest.mark.parametrize("radix,overlap,shared_len,tail,pool", [
    ("no_buffer", False, 30, 30, 150), ("no_buffer", True, 30, 30, 130),
    ("extra_buffer", False, 66, 10, 120), ("extra_buffer", True, 66, 10, 130)])
def test_preemption_and_prefix_hits_under_speculation(tiny_checkpoint, radix, overlap,
                                                      shared_len, tail, pool):
    """A pool too small for all requests (preemptions, scratch pages for drafts) and shared
    prefixes with the prefix cache (hits; extra_buffer snapshots prompts at multiples of 64
    tokens); stop tokens end requests inside the kept drafts. The overlap cases run chains
    (trees run the normal loop)."""
    path = tiny_checkpoint("tiny")
    shared = random_prompts(1, shared_len, shared_len + 1, 384, seed=3)[0]
    prompts = [shared + p for p in random_prompts(6, 1, tail, 384, seed=4)]
    kwargs = dict(max_total_tokens=pool, radix=radix, chunk=8, overlap=overlap)
    want = _reference(path, prompts, GREEDY, **kwargs)
    stop = SamplingParams(temperature=0.0, max_new_tokens=14,
                          stop_token_ids=(want["r0"][5], want["r3"][2]))
    want_stop = _reference(path, prompts, stop, **kwargs)
    for (params, expected), topk in zip(((GREEDY, want), (stop, want_stop)),
                                        (1, 1 if overlap else 2)):
        engine = _engine(path, 3, topk, None if topk == 1 else 6, **kwargs)
        _oracle(engine, expected)
        assert run_with_changes(engine, prompts, params) == expected
        assert engine.stats()["num_preemptions"] > 0
        assert engine.stats()["prefix_cache"]["cached_tokens"] > 0
        assert_pools_at_baseline(engine)


@pytest.mark.parametrize("overlap", [False, True])
def test_speculating_prompts_are_cached(tiny_checkpoint, overlap):
    """extra_buffer: the snapshot in a speculating request's last prompt chunk is cached like
    any prompt's (settling the step's speculation once dropped it), so a later request with
    that prefix hits it."""
    path = tiny_checkpoint("tiny")
    prompt = random_prompts(1, 70, 71, 384, seed=21)[0]
    engine = _engine(path, 3, radix="extra_buffer", chunk=128, overlap=overlap)
    run_with_changes(engine, [prompt], GREEDY)
    before = engine.stats()["prefix_cache"]["cached_tokens"]
    run_with_changes(engine, [prompt[:66] + [5, 6]], GREEDY)
    assert engine.stats()["prefix_cache"]["cached_tokens"] - before >= 64
    assert_pools_at_baseline(engine)


@pytest.mark.parametrize("topk,draft_tokens,overlap", [(2, 5, False), (1, None, True)])
def test_tp2_speculation_equals_plain_tp1(tiny_checkpoint, topk, draft_tokens, overlap):
    """Two real ranks (gloo) run every speculative step on the same plan: draft trees (normal
    loop) or chains (overlap loop: each rank feeds its own verify's results forward), verify
    and acceptance agree across ranks, and the tokens are those of plain decoding at TP 1."""
    from qnext.worker.config import ParallelConfig
    from qnext.worker.layers.parallel import reset_tp_info

    path = tiny_checkpoint("tiny-tp")
    prompts = random_prompts(4, 1, 30, 384, seed=9)
    cfg = engine_config(path, max_total_tokens=600, chunk=8, overlap=overlap)
    cfg = replace(cfg, load=replace(cfg.load, dtype="float64"))  # TP sums in another order
    want = run_with_changes(Engine(cfg), prompts, GREEDY)
    reset_tp_info()
    engine = Engine(replace(cfg, parallel=ParallelConfig(tp_size=2),
                            spec=SpecConfig("NEXTN", num_steps=2, eagle_topk=topk,
                                            num_draft_tokens=draft_tokens)))
    try:
        assert run_with_changes(engine, prompts, GREEDY) == want
        assert engine.stats()["spec"]["verify_seqs"] > 0
        assert_pools_at_baseline(engine)
    finally:
        engine.close()


@pytest.mark.parametrize("topk,draft_tokens,overlap", [(1, None, False), (2, 6, False),
                                                       (1, None, True)])
def test_extra_buffer_snapshots_inside_kept_drafts(tiny_checkpoint, topk, draft_tokens,
                                                   overlap):
    """extra_buffer, track interval 64: decodes cross position 64 inside a verify; the
    snapshot is taken when the kept path reaches it (dropped otherwise). A second round whose
    prompts extend the first round's sequences hits those snapshots and still gives the tokens
    of plain decoding."""
    path = tiny_checkpoint("tiny")
    params = SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True)
    first = random_prompts(5, 44, 63, 384, seed=12)
    kwargs = dict(radix="extra_buffer", track_interval=64, chunk=16, max_prefill_tokens=64,
                  overlap=overlap)
    want = _reference(path, first, params, **kwargs)
    engine = _engine(path, 3, topk, draft_tokens, **kwargs)
    _oracle(engine, want)
    assert run_with_changes(engine, first, params) == want
    second = [p + want[f"r{i}"] + [7, 8] for i, p in enumerate(first)]
    want2 = _reference(path, second, params, **kwargs)
    engine.executor.drafter.proposals = type(engine.executor.drafter).proposals.__get__(
        engine.executor.drafter)  # the real head again (request ids restart at r0)
    before = engine.stats()["prefix_cache"]["cached_tokens"]
    got = run_with_changes(engine, second, params)
    assert [got[f"r{i}"] for i in range(5)] == [want2[f"r{i}"] for i in range(5)]
    assert engine.stats()["prefix_cache"]["cached_tokens"] - before >= 5 * 64
    assert_pools_at_baseline(engine)


def test_eagle_takes_the_head_from_a_draft_checkpoint(tiny_checkpoint):
    """EAGLE with a separate checkpoint that holds the same head (same preset and seed) drafts
    exactly as NEXTN does; a draft of another width is refused naming the flag."""
    from qnext.worker.config import ConfigError

    path = tiny_checkpoint("tiny")
    prompts = random_prompts(4, 1, 40, 384, seed=2)
    want = _reference(path, prompts, GREEDY)
    cfg = engine_config(path)
    stats = {}
    for spec in (SpecConfig("NEXTN", num_steps=2, eagle_topk=2, num_draft_tokens=4),
                 SpecConfig("EAGLE", str(tiny_checkpoint("tiny", seed=0)), 2, 2, 4)):
        engine = Engine(replace(cfg, spec=spec))
        assert run_with_changes(engine, prompts, GREEDY) == want
        stats[spec.algorithm] = engine.stats()["spec"]
    assert stats["EAGLE"] == stats["NEXTN"]
    with pytest.raises(ConfigError, match="--speculative-draft-model-path"):
        Engine(replace(cfg, spec=SpecConfig("EAGLE", str(tiny_checkpoint("tiny-b")))))


def test_runtime_switches_under_speculation(tiny_checkpoint):
    """Strategy switches and a state re-split while speculating requests run: the new pools
    come with new verify buffers and draft K/V; the tokens stay those of plain decoding."""
    path = tiny_checkpoint("tiny")
    prompts = random_prompts(6, 1, 40, 384, seed=21)
    want = _reference(path, prompts, GREEDY)
    engine = _engine(path, 2, 2, 5, radix="no_buffer", track_interval=64)
    changes = [(3, dict(strategy="extra_buffer")), (6, dict(num_slots=40)),
               (9, dict(strategy="off"))]
    assert run_with_changes(engine, prompts, GREEDY, changes) == want
    assert engine.stats()["spec"]["verify_seqs"] > 0
    assert_pools_at_baseline(engine)
