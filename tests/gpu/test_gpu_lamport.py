"""The barrier-free one-shot all-reduce (`kernels/allreduce.py`) and its fusion with the
residual add and RMSNorm (`kernels/allreduce_norm.py`) between two ranks that really run at
once: on one GPU, two streams (the buffers are plain device memory both kernels can address);
under Triton's interpreter, two processes over shared CPU memory (each maps the buffers at its
own addresses, as peers map symmetric memory). One sequence interleaves both kinds of call on
one buffer, in changing sizes (odd, one element, the whole buffer), which checks the shared
slot rotation and the re-emptying of used lanes; -0.0 inputs check the empty-lane marker."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from qnext.kernels.launch import interpreting
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS, ON_GPU
from tests.unit.kernels.helpers import rel_err

pytestmark = KERNEL_MARKS

CAP = 2048
EPS = 1e-6
# (kind, rows, width): "sum" all-reduces rows x width elements; "norm" also adds a residual and
# normalises each row (the fused kernel); "moe" is a norm call whose message is a MoE's
# uncombined rows (K per token, some ids dropped), summed per token by the kernel
CALLS = (("sum", 5, 1), ("norm", 3, 96), ("sum", 600, 1), ("moe", 3, 96), ("sum", 1, 1),
         ("norm", 21, 96), ("sum", 2048, 1), ("moe", 5, 256), ("norm", 1, 2048), ("sum", 37, 1),
         ("norm", 2, 1000), ("sum", 3, 1))
MOE_K, MOE_E = 3, 5


def _randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


def _message(call: int, rank: int) -> torch.Tensor:
    kind, rows, width = CALLS[call]
    x = _randn(1000 * call + rank, rows * (MOE_K if kind == "moe" else 1), width)
    x.view(-1)[::7] = -0.0  # a pushed -0.0 must not read as an empty lane
    return x


def _moe_ids(call: int) -> torch.Tensor:
    """[T, K] expert ids, the same on every rank; -1 and E are dropped ids."""
    gen = torch.Generator().manual_seed(call)
    return torch.randint(-1, MOE_E + 1, (CALLS[call][1], MOE_K), generator=gen)


def _combined(call: int, rank: int) -> torch.Tensor:
    """The combine of a "moe" message: each token's valid rows summed in slot order (fp32)."""
    ids, rows = _moe_ids(call), _message(call, rank).float().view(-1, MOE_K, CALLS[call][2])
    acc = torch.zeros(rows.shape[0], rows.shape[2])
    for j in range(MOE_K):
        acc += rows[:, j] * ((ids[:, j] >= 0) & (ids[:, j] < MOE_E))[:, None]
    return acc.to(torch.bfloat16)


def _norm_operands(call: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual and weight of a norm call (the same on every rank)."""
    _, rows, width = CALLS[call]
    return _randn(7 + call, rows, width), 0.1 * _randn(9 + call, width)


def _expected(call: int) -> list[torch.Tensor]:
    from qnext.kernels.allreduce import all_reduce_ref
    from qnext.kernels.allreduce_norm import all_reduce_add_rms_norm_ref

    kind = CALLS[call][0]
    parts = [(_combined if kind == "moe" else _message)(call, rank) for rank in range(2)]
    if kind == "sum":
        return [all_reduce_ref(parts)]
    return list(all_reduce_add_rms_norm_ref(parts, *_norm_operands(call), EPS))


def _inputs(rank: int, device) -> list[tuple]:
    """Each call's operands on one rank: (x,) or (x, residual, weight), x a tensor or the
    ExpertRows of a "moe" call."""
    from qnext.kernels.expert_rows import ExpertRows

    def x(call: int, kind: str):
        rows = _message(call, rank)
        return ExpertRows(rows, _moe_ids(call), MOE_E) if kind == "moe" else rows

    return [((x(call, kind),) if kind == "sum" else (x(call, kind), *_norm_operands(call)))
            for call, (kind, _, _) in enumerate(CALLS)]


def _run(rank: int, inputs: list[tuple], peers, state, max_spin: int) -> list[list]:
    """Launches every call of one rank, in order (the inputs already on the device: a copy to
    it could wait for this rank's spinning call); returns each call's outputs."""
    from qnext.kernels.allreduce import lamport_all_reduce
    from qnext.kernels.allreduce_norm import lamport_all_reduce_add_rms_norm

    outputs = []
    for x, *norm in inputs:
        if not norm:
            outputs.append([lamport_all_reduce(x, x, peers, state, rank, 2, CAP, max_spin)])
        else:
            outputs.append(list(lamport_all_reduce_add_rms_norm(
                x, *norm, EPS, peers, state, rank, 2, CAP, max_spin)))
    return outputs


def _on(device, inputs: list[tuple]) -> list[tuple]:
    from qnext.kernels.expert_rows import ExpertRows

    def moved(t):
        if isinstance(t, ExpertRows):
            return ExpertRows(t.rows.to(device), t.ids.to(device), t.num_experts)
        return t.to(device)
    return [tuple(moved(t) for t in operands) for operands in inputs]


def _process_rank(rank: int, buffers: list, results: torch.Tensor, states: torch.Tensor) -> None:
    """One rank under the interpreter. The spin limit (the peer process may start seconds
    later) turns a protocol bug into a failed flag instead of a hang."""
    peers = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64)
    for call, outs in enumerate(_run(rank, _inputs(rank, "cpu"), peers, states[rank], 1 << 20)):
        for i, out in enumerate(outs):
            results[rank, call, i, :out.numel()] = out.reshape(-1)


def _buffers(device) -> list:
    from qnext.kernels.allreduce import lamport_buffer

    return [lamport_buffer(2, CAP, torch.bfloat16, device) for _ in range(2)]


def _check(results, states: torch.Tensor) -> None:
    """results[rank][call][i]: output i of that call on that rank (any shape)."""
    from qnext.kernels.allreduce import lamport_failed

    for call, want in enumerate(_expected(c) for c in range(len(CALLS))):
        for i, ref in enumerate(r.reshape(-1) for r in want):
            got = [results[rank][call][i].reshape(-1)[:ref.numel()].cpu() for rank in range(2)]
            assert torch.equal(got[0], got[1]), call  # every rank gets the same bits
            if i == 0 and CALLS[call][0] != "sum":  # the normalised rows
                assert torch.equal(got[0], ref) or rel_err(got[0], ref) <= 1e-2, call
            elif ON_GPU:  # sums (and sum + residual): float32 in rank order, one rounding
                assert torch.equal(got[0], ref), call
            else:  # the interpreter rounds float32 to bf16 by truncation (up to three
                # roundings: combine, sum, residual add), an ulp or a few off
                assert torch.equal(got[0], ref) or rel_err(got[0], ref) <= 1e-2, call
    assert not any(lamport_failed(s) for s in states)
    assert states[:, :, 0].eq(len(CALLS)).all()  # every program counted every call


def _check_emptied(buffers: list) -> None:
    """After the sequence only the last call's lanes hold data: every earlier one was emptied
    again (what keeps a later call from reading stale lanes as ready)."""
    from qnext.kernels.allreduce import EMPTY

    last, (_, rows, width) = (len(CALLS) - 1) % 3, CALLS[-1]
    for buffer in buffers:
        bits = buffer.view(torch.int16).cpu()
        full = torch.zeros_like(bits, dtype=torch.bool)
        full[last, :, :rows * width] = True
        assert bits[~full].eq(EMPTY).all() and bits[full].ne(EMPTY).all()


def _load_kernels(streams: list) -> None:
    """CUDA loads a kernel lazily at its first launch and the load waits for the kernels
    running on the device: rank 1's first launch would wait for rank 0's call, which spins
    until rank 1 pushes. So each rank's sequence (RANK is a compile-time constant) runs once
    beforehand on its stream over scratch buffers, without spinning (max_spin 0); this also
    leaves the outputs' memory cached in that stream's pool (no cudaMalloc later)."""
    from qnext.kernels.allreduce import new_state

    scratch = _buffers(DEVICE)
    peers = torch.tensor([b.data_ptr() for b in scratch], dtype=torch.int64, device=DEVICE)
    for rank, stream in enumerate(streams):
        with torch.cuda.stream(stream):
            _run(rank, _on(DEVICE, _inputs(rank, "cpu")), peers, new_state(DEVICE), 0)
        torch.cuda.synchronize()


@pytest.mark.skipif(not ON_GPU, reason="two streams of one GPU")
def test_two_ranks_on_two_streams():
    from qnext.kernels.allreduce import new_state

    streams = [torch.cuda.Stream() for _ in range(2)]
    _load_kernels(streams)
    buffers = _buffers(DEVICE)
    states = torch.stack([new_state(DEVICE) for _ in range(2)])
    peers = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64, device=DEVICE)
    inputs = [_on(DEVICE, _inputs(rank, "cpu")) for rank in range(2)]
    torch.cuda.synchronize()
    results = []
    # each rank's whole sequence is queued on its own stream; the device runs them together
    for rank, stream in enumerate(streams):
        with torch.cuda.stream(stream):
            results.append(_run(rank, inputs[rank], peers, states[rank], 1 << 22))
    torch.cuda.synchronize()
    _check(results, states)
    _check_emptied(buffers)


@pytest.mark.skipif(ON_GPU or not interpreting(), reason="the interpreter's CPU simulation")
def test_two_ranks_in_two_processes():
    from qnext.kernels.allreduce import new_state

    buffers = [b.share_memory_() for b in _buffers("cpu")]
    states = torch.stack([new_state("cpu") for _ in range(2)]).share_memory_()
    results = torch.zeros(2, len(CALLS), 2, CAP, dtype=torch.bfloat16).share_memory_()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_process_rank, args=(r, buffers, results, states), daemon=True)
             for r in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    _check(results, states)
    _check_emptied(buffers)


def test_launchers_reject_bad_inputs():
    from qnext.kernels.allreduce import lamport_all_reduce, new_state
    from qnext.kernels.allreduce_norm import lamport_all_reduce_add_rms_norm

    peers = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    x = torch.zeros(8, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match="bf16 or fp16"):
        lamport_all_reduce(x.float(), x.float(), peers, new_state(DEVICE), 0, 2, CAP)
    with pytest.raises(ValueError, match="exceed"):
        lamport_all_reduce(x, x, peers, new_state(DEVICE), 0, 2, 4)
    with pytest.raises(ValueError, match="rank"):
        lamport_all_reduce(x, x, peers, new_state(DEVICE), 2, 2, CAP)
    rows, w = x.view(2, 4), torch.ones(4, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match="residual"):
        lamport_all_reduce_add_rms_norm(rows, rows.T.contiguous(), w, EPS, peers,
                                        new_state(DEVICE), 0, 2, CAP)
    with pytest.raises(ValueError, match="weight"):
        lamport_all_reduce_add_rms_norm(rows, rows, w[:3], EPS, peers, new_state(DEVICE), 0,
                                        2, CAP)
    from qnext.kernels.expert_rows import ExpertRows

    moe = ExpertRows(rows, torch.zeros(1, 2, dtype=torch.int64, device=DEVICE), 4)
    with pytest.raises(ValueError, match="residual"):  # 1 token's rows onto 2 residual rows
        lamport_all_reduce_add_rms_norm(moe, rows, w, EPS, peers, new_state(DEVICE), 0, 2, CAP)
