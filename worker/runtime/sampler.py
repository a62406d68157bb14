"""Batched next-token sampling on the logits' device: `Sampler.sample` -> `SampleOutput`.

Legend: N = rows (one per sequence being sampled), M = the non-greedy rows among them,
V = vocabulary size, n = the largest `top_logprobs` asked for in the batch.

Per row, in this order:
1. logprobs and top-n logprobs come from log_softmax of the RAW model logits: they report what
   the model predicted, before min-new-tokens masking, penalties, temperature and filtering.
2. while `counter < min_new_tokens`, the EOS ids (whatever `ignore_eos` says) and the row's
   `stop_token_ids` get logit -inf.
3. repetition / frequency / presence penalties (`penalties.py`).
4. greedy rows (`params.is_greedy`) take the argmax.
5. other rows: logits / temperature, softmax, top-k, then top-p on the renormalised top-k
   distribution (keep the smallest most-probable set whose mass reaches top_p, never empty),
   then min-p (drop p < min_p * max p), renormalise, draw.

The draw keeps no generator state. A counter-based hash of (seed, counter, vocab index) gives a
uniform u in (0, 1) per token and the row takes argmax(p / -log u): an exponential race, which
is exactly a draw from p. The token therefore depends only on the seed, the counter and the
row's own logits, never on the batch it shares a step with or its position in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from qnext.worker.runtime.penalties import PenaltyTracker, apply_penalties
from qnext.worker.runtime.transfer import to_device, to_device_many
from qnext.worker.sched.plan import SampleSpec

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9  # 2^32 / golden ratio, odd: spreads small integers over 32 bits


class SampleOutput(NamedTuple):
    token_ids: torch.Tensor  # [N] int64, on the logits' device
    logprobs: torch.Tensor | None  # [N] float32 raw logprob of the chosen token; None: nobody asked
    top_ids: torch.Tensor | None  # [N, n] int64, most likely first; None when n == 0
    top_logprobs: torch.Tensor | None  # [N, n] float32 raw logprobs matching top_ids


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32 in int64, split in 16-bit halves so nothing
    overflows (each partial product stays below 2^48)."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The "lowbias32" xor-shift-multiply finaliser: a bijection on 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash_uniform(seeds: Sequence[int], counters: Sequence[int], vocab_size: int,
                 device: torch.device | str,
                 counter_shift: torch.Tensor | None = None) -> torch.Tensor:
    """[M, V] float32 uniforms in (0, 1), a pure function of (seed, counter, vocab index);
    `counter_shift` [M] (on the device) is added to the counters there.

    The 64-bit seed is hashed (low half, then high half folded in), mixed with the counter and
    hashed again to a 32-bit row key; each vocab index is combined with the key and hashed
    twice. The top 23 bits give u = (2k + 1) / 2^24, exact in float32, never 0 or 1.
    """
    seed_bits = [s & 0xFFFFFFFFFFFFFFFF for s in seeds]
    rows = [[s & _MASK32, s >> 32, c & _MASK32] for s, c in zip(seed_bits, counters, strict=True)]
    lo, hi, ctr = to_device(rows, device).view(-1, 3).unbind(1)
    if counter_shift is not None:
        ctr = (ctr + counter_shift) & _MASK32
    key = _mix32(_mix32(lo ^ _GOLDEN32) ^ hi)
    key = _mix32(key ^ _mul32(ctr, _GOLDEN32))[:, None]  # [M, 1]
    vocab = _mul32(torch.arange(vocab_size, dtype=torch.long, device=device), _GOLDEN32)
    bits = _mix32(_mix32((key + vocab) & _MASK32) ^ key)  # [M, V]
    return ((bits >> 9).float() * 2 + 1) * 2.0**-24


def filter_probs(probs: torch.Tensor, specs: Sequence[SampleSpec]) -> torch.Tensor:
    """probs [M, V] after top-k, top-p and min-p, renormalised (rows sum to 1)."""
    params = [spec.params for spec in specs]
    vocab_size = probs.shape[1]
    if any(p.top_k is not None or p.top_p < 1.0 for p in params):
        top_k = [vocab_size if p.top_k is None else min(p.top_k, vocab_size) for p in params]
        top_p = [p.top_p for p in params]
        probs = probs * _nucleus_mask(probs, top_k, top_p)
    if any(p.min_p > 0.0 for p in params):
        min_p = to_device([p.min_p for p in params], probs.device, probs.dtype)
        floor = min_p[:, None] * probs.amax(dim=1, keepdim=True)
        probs = probs.masked_fill(probs < floor, 0.0)
    return probs / probs.sum(dim=1, keepdim=True)


def _nucleus_mask(probs: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """[M, V] bool: inside the row's top-k, and inside the smallest prefix of the renormalised
    top-k distribution whose mass reaches top_p. The most probable token is always kept."""
    device = probs.device
    sorted_probs, order = probs.sort(dim=1, descending=True)
    rank = torch.arange(probs.shape[1], device=device)[None, :]
    keep = rank < to_device(top_k, device)[:, None]
    sorted_probs = sorted_probs * keep
    mass = sorted_probs.cumsum(dim=1)
    mass_before = (mass - sorted_probs) / mass[:, -1:]
    top_p_col = to_device(top_p, device, probs.dtype)[:, None]
    keep &= (mass_before < top_p_col) | (top_p_col >= 1.0)
    keep[:, 0] = True
    return torch.zeros_like(keep).scatter_(1, order, keep)


class Sampler:
    """Turns a step's logits and per-sequence `SampleSpec`s into token ids (and logprobs)."""

    def __init__(self, vocab_size: int, eos_token_ids: tuple[int, ...],
                 device: torch.device | str) -> None:
        bad = [t for t in eos_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"eos ids {bad} outside the vocabulary of {vocab_size}")
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        self.device = torch.device(device)

    def sample(self, logits: torch.Tensor, seq_ids: Sequence[int],
               specs: Sequence[SampleSpec], tracker: PenaltyTracker | None = None
               ) -> SampleOutput:
        """Sample one token per row of `logits` [N, V'] (V' >= V; columns past V are padding).
        Row i belongs to seq_ids[i] and follows specs[i]. Nothing waits on the device."""
        if not len(seq_ids) == len(specs) == logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} logit rows, {len(seq_ids)} seq ids, "
                             f"{len(specs)} specs")
        if logits.shape[1] < self.vocab_size:
            raise ValueError(f"logits have {logits.shape[1]} columns, vocab is {self.vocab_size}")
        raw = logits[:, : self.vocab_size].float()
        wants_logprobs = any(s.params.logprobs or s.params.top_logprobs > 0 for s in specs)
        raw_logprobs = torch.log_softmax(raw, dim=1) if wants_logprobs else None
        processed = apply_penalties(self._block_stops(raw, specs), seq_ids, specs, tracker)
        token_ids = self._choose(processed, specs)
        return _with_logprobs(token_ids, raw_logprobs, specs)

    def _block_stops(self, logits: torch.Tensor, specs: Sequence[SampleSpec]) -> torch.Tensor:
        """-inf on EOS and stop ids of the rows still below min_new_tokens."""
        rows: list[int] = []
        cols: list[int] = []
        for i, spec in enumerate(specs):
            if spec.counter < spec.params.min_new_tokens:
                blocked = sorted({*self.eos_token_ids, *spec.params.stop_token_ids})
                rows += [i] * len(blocked)
                cols += blocked
        if not rows:
            return logits
        index = tuple(to_device_many([rows, cols], logits.device))
        return logits.index_put(index, torch.full((), float("-inf"), device=logits.device))

    def _choose(self, logits: torch.Tensor, specs: Sequence[SampleSpec]) -> torch.Tensor:
        """[N] int64: argmax for greedy rows, a seeded draw for the others."""
        token_ids = logits.argmax(dim=1)
        drawn = [i for i, spec in enumerate(specs) if not spec.params.is_greedy]
        if not drawn:
            return token_ids
        index = to_device(drawn, logits.device)
        rows = logits.index_select(0, index)
        return token_ids.index_copy(0, index, _draw(rows, [specs[i] for i in drawn]))


def _draw(logits: torch.Tensor, specs: Sequence[SampleSpec]) -> torch.Tensor:
    """[M] int64: one exponential-race draw per row from the filtered, tempered softmax."""
    temperature = to_device([s.params.temperature for s in specs], logits.device, logits.dtype)
    probs = filter_probs(torch.softmax(logits / temperature[:, None], dim=1), specs)
    uniform = hash_uniform([s.seed for s in specs], [s.counter for s in specs],
                           logits.shape[1], logits.device)
    return (probs / -torch.log(uniform)).argmax(dim=1)


def _with_logprobs(token_ids: torch.Tensor, raw_logprobs: torch.Tensor | None,
                   specs: Sequence[SampleSpec]) -> SampleOutput:
    if raw_logprobs is None:
        return SampleOutput(token_ids, None, None, None)
    chosen = raw_logprobs.gather(1, token_ids[:, None]).squeeze(1)
    num_top = min(max(s.params.top_logprobs for s in specs), raw_logprobs.shape[1])
    if num_top == 0:
        return SampleOutput(token_ids, chosen, None, None)
    top_logprobs, top_ids = raw_logprobs.topk(num_top, dim=1)
    return SampleOutput(token_ids, chosen, top_ids, top_logprobs)
