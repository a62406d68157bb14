"""Sampler and penalties on CPU: greedy, distribution of seeded draws, top-k / top-p / min-p,
temperature, batch invariance of the counter-based hash, penalties and the tracker,
min_new_tokens, raw logprobs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qnext.worker.runtime.penalties import PenaltyTracker, apply_penalties, uses_penalties
from qnext.worker.runtime.sampler import Sampler, hash_uniform
from qnext.worker.sched.plan import SampleSpec
from qnext.worker.sched.request import SamplingParams

V = 8
EOS = (7,)
NUM_DRAWS = 20_000


def spec(seed: int = 0, counter: int = 0, **params) -> SampleSpec:
    return SampleSpec(SamplingParams(**params), seed, counter)


def sampler(vocab_size: int = V) -> Sampler:
    return Sampler(vocab_size, EOS, "cpu")


def draw_many(row: torch.Tensor, seed: int = 0, **params) -> torch.Tensor:
    """NUM_DRAWS draws from one logits row, counters 0.. (the path a sequence walks)."""
    specs = [spec(seed, c, **params) for c in range(NUM_DRAWS)]
    out = sampler(row.shape[0]).sample(row.expand(NUM_DRAWS, -1), list(range(NUM_DRAWS)), specs)
    return out.token_ids


def freqs(tokens: torch.Tensor, vocab_size: int = V) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab_size).double() / tokens.numel()


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p.double() - q.double()).abs().sum().item()


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log().float()


def entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return -(p * p.log()).sum().item()


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_greedy_takes_the_argmax(gen):
    logits = torch.randn(6, 50, generator=gen)
    specs = [spec(temperature=0.0), spec(top_k=1), spec(temperature=0.0, top_p=0.1)] * 2
    out = Sampler(50, EOS, "cpu").sample(logits, list(range(6)), specs)
    assert out.token_ids.dtype == torch.int64
    assert torch.equal(out.token_ids, logits.argmax(dim=1))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_draws_follow_the_tempered_softmax(gen, temperature):
    row = torch.randn(V, generator=gen) * 1.5
    empirical = freqs(draw_many(row, temperature=temperature))
    assert tv(empirical, torch.softmax(row / temperature, dim=0)) < 0.02


def test_top_k_keeps_only_the_k_best(gen):
    row = torch.randn(V, generator=gen)
    best = row.topk(2).indices
    empirical = freqs(draw_many(row, top_k=2))
    assert empirical[best].sum().item() == 1.0
    expected = torch.zeros(V).index_put((best,), torch.softmax(row[best], dim=0))
    assert tv(empirical, expected) < 0.02


def test_top_p_draws_only_from_the_nucleus():
    row = logits_of([0.1, 0.5, 0.15, 0.25] + [1e-9] * 4)
    # sorted mass: 0.5, 0.75 (>= 0.7) -> nucleus {1, 3}
    empirical = freqs(draw_many(row, top_p=0.7))
    assert set(empirical.nonzero().flatten().tolist()) == {1, 3}
    assert abs(empirical[1].item() - 2 / 3) < 0.02
    # with 0.8 the third token (0.15) joins
    assert set(freqs(draw_many(row, top_p=0.8)).nonzero().flatten().tolist()) == {1, 2, 3}


def test_top_p_is_taken_after_top_k_renormalises():
    row = logits_of([0.4, 0.3, 0.2, 0.1, 1e-9, 1e-9, 1e-9, 1e-9])
    # top-2 renormalised: 4/7, 3/7; top_p 0.5 -> the first alone reaches it
    assert set(draw_many(row, top_k=2, top_p=0.5).tolist()) == {0}
    # without top-k 0.4 < 0.5, so the second token joins
    assert set(draw_many(row, top_p=0.5).tolist()) == {0, 1}


def test_min_p_drops_tokens_below_the_scaled_max():
    row = logits_of([0.5, 0.3, 0.12, 0.08, 1e-9, 1e-9, 1e-9, 1e-9])
    picked = set(draw_many(row, min_p=0.2).tolist())  # floor 0.1: token 3 goes
    assert picked == {0, 1, 2}


def test_temperature_changes_the_entropy(gen):
    row = torch.randn(V, generator=gen)
    h = [entropy(freqs(draw_many(row, temperature=t))) for t in (0.5, 1.0, 2.0)]
    assert h[0] < h[1] < h[2]


def test_same_seed_and_counter_give_the_same_token_in_any_batch(gen):
    target = torch.randn(V, generator=gen)
    params = dict(temperature=0.9, top_k=6, top_p=0.95)
    mixes = [dict(temperature=0.0), dict(top_p=0.5), dict(min_p=0.3), dict(top_k=3), {}]
    for counter in range(20):
        alone = sampler().sample(target[None], [0], [spec(42, counter, **params)]).token_ids
        for position in range(8):
            others = [spec(counter + 100 + j, j, **mixes[j % 5]) for j in range(7)]
            specs = [*others[:position], spec(42, counter, **params), *others[position:]]
            logits = torch.randn(8, V, generator=gen)
            logits[position] = target
            batch = sampler().sample(logits, list(range(8)), specs).token_ids
            assert batch[position].item() == alone.item()


def test_different_seeds_draw_differently():
    row = torch.zeros(V)
    a, b, a_again = (draw_many(row, seed=s)[:500] for s in (1, 2, 1))
    assert torch.equal(a, a_again)
    assert (a != b).float().mean().item() > 0.75  # 7/8 expected for independent uniforms


def test_hash_uniforms_are_open_interval_and_decorrelated():
    u = hash_uniform(list(range(64)), [0] * 64, 4096, "cpu")
    assert u.min().item() > 0.0 and u.max().item() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.005
    neighbours = torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1]
    assert abs(neighbours.item()) < 0.01
    by_counter = hash_uniform([7] * 64, list(range(64)), 4096, "cpu")
    assert abs(torch.corrcoef(by_counter[:2])[0, 1].item()) < 0.05
    assert torch.equal(hash_uniform([-3, 2**63 + 5], [1, 2], 16, "cpu"),
                       hash_uniform([-3, 2**63 + 5], [1, 2], 16, "cpu"))


def test_repetition_penalty_on_positive_and_negative_logits():
    tracker = PenaltyTracker(V, "cpu")
    tracker.register(10, [0, 1], num_prompt=1)  # 0 in the prompt, 1 generated
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0, 0, 0, 0], [2.0, -2.0, 1.0, -1.0, 0, 0, 0, 0]])
    specs = [spec(repetition_penalty=2.0), spec()]
    out = apply_penalties(logits, [10, 11], specs, tracker)
    assert out[0].tolist() == [1.0, -4.0, 1.0, -1.0, 0, 0, 0, 0]
    assert torch.equal(out[1], logits[1])  # seq 11 is neither penalised nor looked up


def test_frequency_and_presence_count_outputs_only():
    tracker = PenaltyTracker(V, "cpu")
    tracker.register(3, [5, 0, 0, 1], num_prompt=1)
    logits = torch.full((1, V), 1.0)
    out = apply_penalties(logits, [3], [spec(frequency_penalty=0.5, presence_penalty=0.25)],
                          tracker)
    expected = [1.0 - 1.0 - 0.25, 1.0 - 0.5 - 0.25] + [1.0] * 6
    assert out[0].tolist() == expected


def test_tracker_update_changes_the_next_step():
    tracker = PenaltyTracker(V, "cpu", capacity=1)
    for seq_id in range(5):  # forces growth past the initial capacity
        tracker.register(seq_id, [6], num_prompt=1)
    logits = torch.tensor([[0, 0, 0, 2.0, 1.5, 0, 0, 0]]).expand(2, -1)
    specs = [spec(temperature=0.0, presence_penalty=1.0), spec(temperature=0.0,
                                                                 repetition_penalty=1.5)]
    first = sampler().sample(logits, [1, 4], specs, tracker).token_ids
    assert first.tolist() == [3, 3]
    tracker.update([1, 99, 4], torch.tensor([3, 0, 3]))  # 99 is untracked: skipped
    assert sampler().sample(logits, [1, 4], specs, tracker).token_ids.tolist() == [4, 4]
    seen, counts = tracker.gather([1, 0])
    assert counts[0, 3].item() == 1 and counts[1].sum().item() == 0 and seen[1, 6].item()
    tracker.release([1, 4, 1234])
    assert 1 not in tracker and 0 in tracker and len(tracker) == 3


def test_reregistering_after_preemption_resets_the_row():
    tracker = PenaltyTracker(V, "cpu")
    tracker.register(1, [2, 2], num_prompt=2)
    tracker.update([1], torch.tensor([5]))
    tracker.register(1, [2, 2, 4, 4], num_prompt=2)
    seen, counts = tracker.gather([1])
    assert counts[0].tolist() == [0, 0, 0, 0, 2, 0, 0, 0]
    assert seen[0].nonzero().flatten().tolist() == [2, 4]


def test_penalised_rows_need_a_registered_tracker_entry():
    logits = torch.zeros(1, V)
    with pytest.raises(ValueError):
        sampler().sample(logits, [1], [spec(presence_penalty=0.5)], None)
    with pytest.raises(KeyError):
        sampler().sample(logits, [1], [spec(presence_penalty=0.5)], PenaltyTracker(V, "cpu"))
    assert uses_penalties(SamplingParams(repetition_penalty=1.1))
    assert not uses_penalties(SamplingParams())


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_min_new_tokens_blocks_eos_and_stop_ids(temperature):
    logits = torch.tensor([[0, 0, 0, 0, 0, 9.0, 0, 10.0]])  # EOS 7 best, stop id 5 next
    params = dict(temperature=temperature, min_new_tokens=2, stop_token_ids=(5,),
                  ignore_eos=True)
    for counter in range(40):
        token = sampler().sample(logits, [0], [spec(3, counter, **params)]).token_ids.item()
        if counter < 2:
            assert token not in (5, 7)
        elif temperature == 0.0:
            assert token == 7


def test_logprobs_come_from_the_raw_logits(gen):
    logits = torch.randn(3, V, generator=gen)
    specs = [spec(1, 0, logprobs=True, top_logprobs=3, temperature=0.5, min_p=0.1),
             spec(temperature=0.0, logprobs=True, top_logprobs=1, repetition_penalty=3.0),
             spec(2, 5)]
    tracker = PenaltyTracker(V, "cpu")
    tracker.register(11, list(range(V)), num_prompt=V)
    out = sampler().sample(logits, [10, 11, 12], specs, tracker)
    raw = torch.log_softmax(logits, dim=1)
    assert torch.allclose(out.logprobs, raw.gather(1, out.token_ids[:, None]).squeeze(1))
    best = raw.sort(dim=1, descending=True)
    assert out.top_ids.shape == (3, 3)
    assert torch.equal(out.top_ids, best.indices[:, :3])
    assert torch.allclose(out.top_logprobs, best.values[:, :3])


def test_no_logprobs_asked_gives_none(gen):
    out = sampler().sample(torch.randn(2, V, generator=gen), [0, 1], [spec(), spec(1, 1)])
    assert out.logprobs is None and out.top_ids is None and out.top_logprobs is None
    only_chosen = sampler().sample(torch.randn(1, V, generator=gen), [0], [spec(logprobs=True)])
    assert only_chosen.logprobs is not None and only_chosen.top_ids is None


def test_padded_vocab_columns_are_never_sampled(gen):
    logits = torch.cat([torch.zeros(64, V), torch.full((64, 4), 50.0)], dim=1)
    out = sampler().sample(logits, list(range(64)), [spec(0, c) for c in range(64)])
    assert out.token_ids.max().item() < V


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(-(2**63), 2**64 - 1), counter=st.integers(0, 10**6),
       top_k=st.one_of(st.none(), st.integers(1, V)), top_p=st.floats(0.05, 1.0),
       min_p=st.floats(0.0, 1.0), temperature=st.floats(0.05, 3.0))
def test_draw_lands_in_the_kept_set(seed, counter, top_k, top_p, min_p, temperature):
    row = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.5, 0.0, -1.0, -3.0])  # sorted, distinct
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    token = sampler().sample(row[None], [0], [SampleSpec(params, seed, counter)]).token_ids.item()
    probs = torch.softmax(row.double() / temperature, dim=0)
    k = V if top_k is None else top_k
    assert token < k
    kept = probs[:k] / probs[:k].sum()
    assert token == 0 or kept[:token].sum().item() < top_p + 1e-6
    assert probs[token].item() >= min_p * probs[0].item() - 1e-6
