"""Speculative acceptance on CPU: greedy chains and trees on hand-made logits (every accept
length, ties), agreement with `Sampler` for deterministic drafts, the emitted-token distribution
of the rejection rule for chains and trees (vectorised trials, fixed seeds), and full acceptance
when the draft is the target."""

from __future__ import annotations

import pytest
import torch

from qnext.worker.runtime.sampler import Sampler
from qnext.worker.runtime.spec_accept import accept_drafts, target_probs
from qnext.worker.sched.plan import SampleSpec
from qnext.worker.sched.request import SamplingParams

V = 5
TRIALS = 30_000
GREEDY = SampleSpec(SamplingParams(temperature=0.0), 0, 0)
P_TARGET = torch.tensor([[0.35, 0.25, 0.2, 0.15, 0.05],
                         [0.1, 0.4, 0.1, 0.3, 0.1],
                         [0.05, 0.05, 0.6, 0.2, 0.1],
                         [0.2, 0.2, 0.2, 0.2, 0.2],
                         [0.5, 0.1, 0.1, 0.1, 0.2]])
Q_DRAFT = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05],
                        [0.3, 0.3, 0.2, 0.1, 0.1],
                        [0.25, 0.25, 0.2, 0.2, 0.1],
                        [0.6, 0.1, 0.1, 0.1, 0.1],
                        [0.2, 0.2, 0.2, 0.2, 0.2]])


def one_hot_logits(argmaxes: list[list[int]], vocab_size: int = 10) -> torch.Tensor:
    """[B, n, V] logits whose argmax at [b, t] is argmaxes[b][t]."""
    logits = torch.zeros(len(argmaxes), len(argmaxes[0]), vocab_size)
    return logits.scatter(2, torch.tensor(argmaxes)[..., None], 3.0)


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p.double() - q.double()).abs().sum().item()


def freqs(tokens: torch.Tensor) -> torch.Tensor:
    return torch.bincount(tokens, minlength=V).double() / max(tokens.numel(), 1)


def test_greedy_chain_keeps_the_longest_matching_prefix():
    argmax = [[1, 2, 3, 4]] * 5
    logits = one_hot_logits(argmax)
    tokens = torch.tensor([[9, 0, 3, 4],    # first proposal wrong: a later match does not count
                           [9, 1, 0, 4],
                           [9, 1, 2, 0],
                           [9, 1, 2, 3],    # all three kept
                           [9, 5, 5, 5]])
    out = accept_drafts(tokens, logits, [GREEDY] * 5)
    assert out.num_accepted.tolist() == [0, 1, 2, 3, 0]
    assert out.path.tolist() == [[0, -1, -1, -1], [0, 1, -1, -1], [0, 1, 2, -1], [0, 1, 2, 3],
                                 [0, -1, -1, -1]]
    assert out.commit_steps.tolist() == [0, 1, 2, 3, 0]
    assert out.bonus_ids.tolist() == [1, 2, 3, 4, 1]  # the argmax after the last kept token
    assert out.token_ids.tolist() == [[1, -1, -1, -1], [1, 2, -1, -1], [1, 2, 3, -1],
                                      [1, 2, 3, 4], [1, -1, -1, -1]]


def test_greedy_ties_go_to_the_lowest_token_id():
    logits = torch.zeros(2, 2, 6)
    logits[:, 0, [2, 4]] = 1.0  # tie between 2 and 4 after the root
    logits[:, 1, [3, 1]] = 1.0
    out = accept_drafts(torch.tensor([[0, 4], [0, 2]]), logits, [GREEDY] * 2)
    assert out.num_accepted.tolist() == [0, 1]
    assert out.token_ids.tolist() == [[2, -1], [2, 1]]
    assert out.token_ids[1].tolist() == Sampler(6, (), "cpu").sample(
        logits[1], [0, 1], [GREEDY] * 2).token_ids.tolist()


def test_greedy_tree_tries_every_child_and_goes_deep():
    parents = [[-1, 0, 0, 1, 2, 2], [-1, 0, 0, 1, 2, 2], [-1, 0, 0, 1, 2, 2]]
    logits = one_hot_logits([[3, 0, 5, 0, 0, 2], [1, 4, 4, 0, 0, 2], [0, 0, 0, 0, 0, 0]])
    tokens = torch.tensor([[7, 1, 3, 5, 4, 5]] * 3)
    # row 0: child 1 rejected, child 2 kept, its child 4 rejected, its child 5 kept: bonus 2
    # row 1: child 1 kept, its child 3 rejected: bonus 4; row 2: no child is 0
    out = accept_drafts(tokens, logits, [GREEDY] * 3, parents)
    assert out.num_accepted.tolist() == [2, 1, 0]
    assert out.path.tolist() == [[0, 2, 5, -1, -1, -1], [0, 1, -1, -1, -1, -1],
                                 [0, -1, -1, -1, -1, -1]]
    assert out.commit_steps.tolist() == [5, 1, 0]
    assert out.token_ids[:, :3].tolist() == [[3, 5, 2], [1, 4, -1], [0, -1, -1]]


def test_deterministic_drafts_emit_what_the_sampler_would():
    gen = torch.Generator().manual_seed(1)
    specs = [SampleSpec(SamplingParams(temperature=t, top_k=k, top_p=p), 100 + b, 7 * b)
             for b, (t, k, p) in enumerate([(1.0, None, 1.0), (0.7, 4, 0.9), (0.0, None, 1.0),
                                            (1.3, None, 0.8)])]
    n, vocab = 5, 12
    logits = torch.randn(len(specs), n, vocab, generator=gen) * 2
    sampler, keep_len = Sampler(vocab, (), "cpu"), [0, 2, 4, 3]
    tokens = torch.full((len(specs), n), 11)
    for b, spec in enumerate(specs):  # proposals: the sampler's own draws, then a wrong token
        for t in range(n - 1):
            step = SampleSpec(spec.params, spec.seed, spec.counter + t)
            drawn = sampler.sample(logits[b, t][None], [b], [step]).token_ids.item()
            tokens[b, t + 1] = drawn if t < keep_len[b] else (drawn + 1) % vocab
    out = accept_drafts(tokens, logits, specs)
    assert out.num_accepted.tolist() == keep_len
    for b, spec in enumerate(specs):
        want = [sampler.sample(logits[b, t][None], [b], [SampleSpec(
            spec.params, spec.seed, spec.counter + t)]).token_ids.item()
            for t in range(keep_len[b] + 1)]
        assert out.token_ids[b, : keep_len[b] + 1].tolist() == want


@pytest.mark.parametrize("sampled", [False, True])
def test_root_alone_is_a_plain_sampler_step(sampled):
    gen = torch.Generator().manual_seed(2)
    specs = [SampleSpec(SamplingParams(temperature=0.8, top_p=0.9), s, s * 3) for s in range(64)]
    logits = torch.randn(64, 1, 9, generator=gen)
    draft = torch.softmax(torch.randn(64, 1, 9, generator=gen), dim=2) if sampled else None
    out = accept_drafts(torch.zeros(64, 1, dtype=torch.int64), logits, specs, None, draft)
    want = Sampler(9, (), "cpu").sample(logits[:, 0], list(range(64)), specs).token_ids
    assert torch.equal(out.bonus_ids, want)
    assert out.num_accepted.eq(0).all() and out.commit_steps.eq(0).all()


def trials(parents: list[int], params: SamplingParams, gen: torch.Generator,
           children_from: torch.Tensor, num: int = TRIALS
           ) -> tuple[torch.Tensor, list[SampleSpec]]:
    """`num` copies of one tree, seeds 0.., proposals drawn from children_from[parent]."""
    tokens = torch.zeros(num, len(parents), dtype=torch.int64)
    for t, p in enumerate(parents[1:], start=1):
        tokens[:, t] = torch.multinomial(children_from[p], num, replacement=True, generator=gen)
    return tokens, [SampleSpec(params, seed, 0) for seed in range(num)]


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.7, top_k=4)])
def test_chain_rejection_sampling_keeps_the_target_distribution(params):
    gen = torch.Generator().manual_seed(3)
    parents = [-1, 0, 1, 2]
    tokens, specs = trials(parents, params, gen, Q_DRAFT)
    logits = P_TARGET[:4].log().expand(TRIALS, -1, -1)
    target = target_probs(P_TARGET[:4].log(), [specs[0]] * 4)
    out = accept_drafts(tokens, logits, specs, [parents] * TRIALS,
                        Q_DRAFT[:4].expand(TRIALS, -1, -1))
    assert tv(freqs(out.token_ids[:, 0]), target[0]) < 0.012
    second = out.token_ids[out.num_accepted >= 1, 1]  # after a kept first proposal: node 1
    assert tv(freqs(second), target[1]) < 0.015
    accept_rate = (out.num_accepted >= 1).double().mean().item()
    assert abs(accept_rate - torch.minimum(target[0], Q_DRAFT[0]).sum().item()) < 0.01


@pytest.mark.parametrize("parents", [[-1, 0, 0, 0], [-1, 0, 0, 1, 2]])
def test_tree_rejection_sampling_keeps_the_target_distribution(parents):
    gen = torch.Generator().manual_seed(4)
    tokens, specs = trials(parents, SamplingParams(), gen, Q_DRAFT)
    n = len(parents)
    out = accept_drafts(tokens, P_TARGET[:n].log().expand(TRIALS, -1, -1), specs,
                        [parents] * TRIALS, Q_DRAFT[:n].expand(TRIALS, -1, -1))
    assert tv(freqs(out.token_ids[:, 0]), P_TARGET[0]) < 0.012
    # more candidates at the root keep more: 1 - P(all rejected) beats a single child's rate
    single = torch.minimum(P_TARGET[0], Q_DRAFT[0]).sum().item()
    assert (out.num_accepted >= 1).double().mean().item() > single + 0.04


def test_top_k_tree_of_deterministic_proposals_keeps_the_target_distribution():
    specs = [SampleSpec(SamplingParams(), seed, 5) for seed in range(TRIALS)]
    tokens = torch.tensor([[0, 1, 3, 0]]).expand(TRIALS, -1)  # the draft's top-3 at the root
    out = accept_drafts(tokens, P_TARGET[:4].log().expand(TRIALS, -1, -1), specs,
                        [[-1, 0, 0, 0]] * TRIALS)
    assert tv(freqs(out.token_ids[:, 0]), P_TARGET[0]) < 0.012
    kept = (out.num_accepted == 1).double().mean().item()
    assert abs(kept - P_TARGET[0, [1, 3, 0]].sum().item()) < 0.01


@pytest.mark.parametrize("parents", [[-1, 0, 1, 2], [-1, 0, 0, 1, 2, 3]])
def test_a_draft_equal_to_the_target_is_always_accepted(parents):
    gen = torch.Generator().manual_seed(5)
    params = SamplingParams(temperature=0.9, top_p=0.95)
    n = len(parents)
    logits = torch.randn(n, V, generator=gen)
    draft = target_probs(logits, [SampleSpec(params, 0, 0)] * n)
    tokens, specs = trials(parents, params, gen, draft, num=2000)
    out = accept_drafts(tokens, logits.expand(2000, -1, -1), specs, [parents] * 2000,
                        draft.expand(2000, -1, -1))
    assert out.num_accepted.eq(3).all()
    assert out.path[:, 1].eq(1).all()  # the first child is always kept


def test_bad_inputs_are_refused():
    logits, tokens = torch.zeros(1, 3, V), torch.zeros(1, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="root"):
        accept_drafts(tokens, logits, [GREEDY], [[-1, -1, 0]])
    with pytest.raises(ValueError, match="root"):
        accept_drafts(tokens, logits, [GREEDY], [[0, 0, 1]])
    with pytest.raises(ValueError, match="parent"):
        accept_drafts(tokens, logits, [GREEDY], [[-1, 2, 0]])
    with pytest.raises(ValueError, match="specs"):
        accept_drafts(tokens, logits, [GREEDY] * 2)
    with pytest.raises(ValueError, match="draft_probs"):
        accept_drafts(tokens, logits, [GREEDY], None, torch.zeros(1, 2, V))
