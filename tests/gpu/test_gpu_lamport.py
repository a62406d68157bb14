"""The barrier-free one-shot all-reduce (`kernels/allreduce.py`) between two ranks that really
run at once: on one GPU, two streams (the buffers are plain device memory both kernels can
address); under Triton's interpreter, two processes over shared CPU memory (each maps the
buffers at its own addresses, as peers map symmetric memory). A sequence of calls of
changing sizes (odd, empty-ish, the whole buffer) checks the slot rotation and the re-emptying
of used lanes, and -0.0 inputs check the empty-lane marker."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from qnext.kernels.launch import interpreting
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS, ON_GPU

pytestmark = KERNEL_MARKS

CAP = 2048
SIZES = (5, 600, 1, 2048, 37, 1100, 2048, 3)


def _message(call: int, rank: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * call + rank)
    x = torch.randn(n, generator=gen).to(torch.bfloat16)
    x[::7] = -0.0  # a pushed -0.0 must not read as an empty lane
    return x


def _expected(call: int, n: int) -> torch.Tensor:
    from qnext.kernels.allreduce import all_reduce_ref

    return all_reduce_ref([_message(call, r, n) for r in range(2)])


def _inputs(rank: int, device) -> list[torch.Tensor]:
    return [_message(call, rank, n).to(device) for call, n in enumerate(SIZES)]


def _launch(rank: int, xs: list, buffers: list, states: torch.Tensor) -> None:
    """Runs every call of one rank (in place on xs). The spin limit (the peer process may
    start seconds later) turns a protocol bug into a failed flag instead of a hang."""
    from qnext.kernels.allreduce import lamport_all_reduce

    peers = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64)
    for x in xs:
        lamport_all_reduce(x, x, peers, states[rank], rank, 2, CAP, max_spin=1 << 20)


def _process_rank(rank: int, buffers: list, results: torch.Tensor, states: torch.Tensor) -> None:
    xs = _inputs(rank, "cpu")
    _launch(rank, xs, buffers, states)
    for call, x in enumerate(xs):
        results[rank, call, :x.numel()] = x


def _buffers(device) -> list:
    from qnext.kernels.allreduce import lamport_buffer

    return [lamport_buffer(2, CAP, torch.bfloat16, device) for _ in range(2)]


def _check(results, states: torch.Tensor) -> None:
    """results[rank][call]: that call's output on that rank."""
    from qnext.kernels.allreduce import lamport_failed

    for call, n in enumerate(SIZES):
        want = _expected(call, n)
        got = [results[rank][call][:n].cpu() for rank in range(2)]
        assert torch.equal(got[0], got[1]), call  # every rank gets the same bits
        # (the interpreter rounds float32 to bf16 by truncation: one ulp off the reference)
        assert torch.equal(got[0], want) if ON_GPU else \
            torch.allclose(got[0].float(), want.float(), rtol=1e-2, atol=0), call
    assert not any(lamport_failed(s) for s in states)
    assert states[:, :, 0].eq(len(SIZES)).all()  # every program counted every call


def _check_emptied(buffers: list) -> None:
    """After the sequence only the last call's lanes hold data: every earlier one was emptied
    again (what keeps a later call from reading stale lanes as ready)."""
    from qnext.kernels.allreduce import EMPTY

    last, n = (len(SIZES) - 1) % 3, SIZES[-1]
    for buffer in buffers:
        bits = buffer.view(torch.int16).cpu()
        full = torch.zeros_like(bits, dtype=torch.bool)
        full[last, :, :n] = True
        assert bits[~full].eq(EMPTY).all() and bits[full].ne(EMPTY).all()


def _load_both_kernels() -> None:
    """CUDA loads a kernel lazily at its first launch and the load waits for the kernels
    running on the device: rank 1's first launch would wait for rank 0's call, which spins
    until rank 1 pushes. So each rank's kernel (RANK is a compile-time constant) is launched
    once beforehand on scratch buffers, without spinning (max_spin 0)."""
    from qnext.kernels.allreduce import lamport_all_reduce, new_state

    scratch = _buffers(DEVICE)
    peers = torch.tensor([b.data_ptr() for b in scratch], dtype=torch.int64, device=DEVICE)
    for rank in range(2):
        x = torch.ones(16, dtype=torch.bfloat16, device=DEVICE)
        lamport_all_reduce(x, x, peers, new_state(DEVICE), rank, 2, CAP, max_spin=0)
    torch.cuda.synchronize()


@pytest.mark.skipif(not ON_GPU, reason="two streams of one GPU")
def test_two_ranks_on_two_streams():
    from qnext.kernels.allreduce import lamport_all_reduce, new_state

    _load_both_kernels()
    buffers = _buffers(DEVICE)
    states = torch.stack([new_state(DEVICE) for _ in range(2)])
    xs = [_inputs(rank, DEVICE) for rank in range(2)]
    peers = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64, device=DEVICE)
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream() for _ in range(2)]
    # each rank's whole sequence is queued on its own stream; the device runs them together
    for rank, stream in enumerate(streams):
        with torch.cuda.stream(stream):
            for x in xs[rank]:
                lamport_all_reduce(x, x, peers, states[rank], rank, 2, CAP, max_spin=1 << 22)
    torch.cuda.synchronize()
    _check(xs, states)
    _check_emptied(buffers)


@pytest.mark.skipif(ON_GPU or not interpreting(), reason="the interpreter's CPU simulation")
def test_two_ranks_in_two_processes():
    from qnext.kernels.allreduce import new_state

    buffers = [b.share_memory_() for b in _buffers("cpu")]
    states = torch.stack([new_state("cpu") for _ in range(2)]).share_memory_()
    results = torch.zeros(2, len(SIZES), CAP, dtype=torch.bfloat16).share_memory_()
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


def test_launcher_rejects_bad_inputs():
    from qnext.kernels.allreduce import lamport_all_reduce, new_state

    peers = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    x = torch.zeros(8, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match="bf16 or fp16"):
        lamport_all_reduce(x.float(), x.float(), peers, new_state(DEVICE), 0, 2, CAP)
    with pytest.raises(ValueError, match="exceed"):
        lamport_all_reduce(x, x, peers, new_state(DEVICE), 0, 2, 4)
    with pytest.raises(ValueError, match="rank"):
        lamport_all_reduce(x, x, peers, new_state(DEVICE), 2, 2, CAP)
