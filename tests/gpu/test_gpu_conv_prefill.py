"""The Triton varlen conv1d prefill kernel against its torch reference: fresh random inputs,
sequences shorter than K-1 (new state = old state + tokens), block-boundary starts, an empty
sequence, mixed initial states, snapshots at t = 1, an inner t and L, strided rows, widths
2 / 3 / 4 / 8, odd channel counts, many short sequences; fp32 and bf16; output poisoned with
NaN; states bit-identical to the reference and untouched slots unchanged. Model shapes
(8192 / 2048 channels) on GPU."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS, ON_GPU, generator  # noqa: E402

pytestmark = KERNEL_MARKS

from qnext.kernels import causal_conv1d_varlen_ref  # noqa: E402
from tests.unit.kernels.helpers import rel_err  # noqa: E402

CASES = [  # lengths, channels, K, block_t
    ([1], 100, 4, 32),
    ([2, 3, 1], 100, 4, 32),
    ([64], 64, 4, 32),
    ([200], 100, 4, 32),
    ([5, 0, 33, 1, 2, 40], 100, 4, 32),
    ([7, 2, 1, 9, 3, 0, 5, 1, 6], 36, 4, 8),  # many starts near block ends: spill rows
    ([3, 7, 0, 30], 70, 3, 16),
    ([2, 9, 17, 1], 40, 8, 8),
    ([700, 3, 330], 36, 4, 32),  # >= SPLIT_FROM_TOKENS: interior blocks in a launch of their own
]
SHORT_CASES = [  # many short sequences: < K-1 tokens, one token, across block ends, empty
    # ones at a block start (before its first sequence), > 32 starts in a block
    ([5, 2, 1, 9, 3, 0, 1, 30, 2] * 6, 36, 4, 16),
    ([1] * 64 + [0] * 5 + [3, 1] + [0] * 40 + [2, 1, 70], 20, 4, 32),
    ([1, 6, 0, 2, 9, 1] * 5, 24, 8, 8),
    ([1, 1, 2, 0, 4, 1, 3] * 5, 24, 2, 8),
    ([2, 1, 0, 3, 1, 7, 1] * 6 + [960], 12, 4, 32),  # two launches, 43 sequences
]
if ON_GPU:
    SHORT_CASES += [([128] * 64, 8192, 4, 32), ([3, 128, 1, 70, 0, 200] * 40, 2048, 4, 32)]
CASES += SHORT_CASES
if ON_GPU:
    CASES += [([8192], 8192, 4, 32), ([1000, 1, 2, 3, 500, 0, 2500], 2048, 4, 32)]
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)]


def _snapshots(lengths: list[int], spare: torch.Tensor):
    """Snapshot slots / offsets cycling t = 1, an inner t, t = L; empty sequences get none."""
    slots, offsets = [], []
    for b, length in enumerate(lengths):
        t = (1, max(1, length // 2), length)[b % 3]
        slots.append(int(spare[b]) if length > 0 else -1)
        offsets.append(t if length > 0 else 0)
    return (torch.tensor(slots, device=DEVICE), torch.tensor(offsets, device=DEVICE))


def _case(lengths: list[int], C: int, K: int, dtype: torch.dtype, seed: int):
    gen = generator(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, device=DEVICE).to(dtype)

    B, T = len(lengths), sum(lengths)
    x = r(T, C + 5)[:, 2:2 + C]  # rows strided like a slice of the fused projection
    states = r(2 * B + 2, C, K - 1)
    perm = torch.randperm(2 * B + 1, generator=gen, device=DEVICE) + 1
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    init = torch.arange(B, device=DEVICE) % 3 != 1
    return dict(x=x, weight=r(C, K), cu_seqlens=cu, state_indices=perm[:B],
                has_initial_state=init), states, perm[B:2 * B]


def _untouched(states: torch.Tensor, *used: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(states.shape[0], dtype=torch.bool, device=states.device)
    for slots in used:
        mask[slots[slots >= 0]] = False
    return mask


@pytest.mark.parametrize("lengths,C,K,block_t", CASES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("snapshot", [False, True])
def test_conv_prefill_matches_reference(lengths, C, K, block_t, dtype, tol, snapshot):
    from qnext.kernels.conv_prefill import conv_prefill

    args, states, spare = _case(lengths, C, K, dtype, seed=sum(lengths) + C + K)
    snaps = dict(zip(("snapshot_slots", "snapshot_offsets"), _snapshots(lengths, spare))) \
        if snapshot else {}
    ref_states, before = states.clone(), states.clone()
    want = causal_conv1d_varlen_ref(**args, conv_states=ref_states, **snaps)
    out = torch.full_like(want, float("nan"))
    got = conv_prefill(**args, conv_states=states, **snaps, out=out, block_t=block_t)
    assert got.data_ptr() == out.data_ptr()
    assert not torch.isnan(got).any() and rel_err(got, want) <= tol
    assert torch.equal(states, ref_states)  # copies of inputs / old states: exact
    used = [args["state_indices"]] + ([snaps["snapshot_slots"]] if snapshot else [])
    keep = _untouched(states, *used)
    empty = torch.tensor(lengths, device=DEVICE) == 0
    keep[args["state_indices"][empty]] = True  # an empty sequence leaves its slot alone
    assert torch.equal(states[keep], before[keep])


def test_conv_prefill_no_activation_and_all_fresh():
    from qnext.kernels.conv_prefill import conv_prefill

    args, states, _ = _case([4, 1, 9], 24, 4, torch.float32, seed=7)
    args["has_initial_state"] = torch.zeros(3, dtype=torch.bool, device=DEVICE)
    ref_states = states.clone()
    want = causal_conv1d_varlen_ref(**args, conv_states=ref_states, activation=None)
    got = conv_prefill(**args, conv_states=states, activation=None, block_t=8)
    assert rel_err(got, want) <= 1e-5 and torch.equal(states, ref_states)


def test_conv_prefill_rejects_bad_arguments():
    from qnext.kernels.conv_prefill import conv_prefill

    args, states, spare = _case([3, 5], 16, 4, torch.float32, seed=3)
    bad = [
        dict(weight=args["weight"][:, :3].contiguous()),  # K disagrees with the states
        dict(weight=torch.randn(16, 9, device=DEVICE)),  # K > 8
        dict(x=args["x"].t().contiguous().t()),  # channels not contiguous
        dict(state_indices=args["state_indices"][:1]),
        dict(has_initial_state=args["has_initial_state"].float()),
        dict(cu_seqlens=args["cu_seqlens"].float()),
        dict(snapshot_slots=spare[:2]),  # offsets missing
        dict(snapshot_slots=spare[:2], snapshot_offsets=torch.tensor([1, 6], device=DEVICE)),
        dict(activation="gelu"),
        dict(out=torch.empty(8, 15, device=DEVICE)),
        dict(block_t=4),  # a sequence's first K-1 tokens must reach at most one block on
        dict(block_c=100),
    ]
    for change in bad:
        with pytest.raises(ValueError):
            conv_prefill(**{**args, **change}, conv_states=states)
    with pytest.raises(ValueError):
        conv_prefill(**args, conv_states=states[:, :, :2])
