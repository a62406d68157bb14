"""The symmetric-memory all-reduce (worker/layers/symm_allreduce.py) against NCCL, the reference,
on 2 and 4 GPUs (one process each, set up by `init_distributed` as the engine does).

Sums of small integers are exact in bf16 and fp32, so the symmetric-memory result and NCCL's
must both equal the exact sum bit for bit: 1 element up to the 512 KB threshold, odd sizes,
2-D, strided and offset inputs (the direct and the padded path), and NCCL beyond the
threshold or for other dtypes. Random floats: every rank gets the same bits, within the
rounding bound of the exact sum (as NCCL's are).
Then the same inside one captured CUDA graph, replayed with new inputs; and the all-reduce
fused with the residual add and RMSNorm that follow it in a decoder layer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qnext.worker.layers.parallel import Communicator, init_distributed, reset_tp_info
from qnext.worker.layers.symm_allreduce import MAX_BYTES, SymmAllReduce
from tests.net import free_port

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]
DEADLINE_S = 300  # a rank stuck in a collective or a spinning kernel fails the test, not CI


def _ints(rank: int, shape, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rank `rank`'s message: integers in [-8, 8] (sums of up to 8 ranks are exact)."""
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    return torch.randint(-8, 9, shape, generator=gen).to(dtype)


def _exact_sum(world: int, shape, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return sum(_ints(r, shape, torch.float64, seed) for r in range(world)).to(dtype)


def _sizes(dtype: torch.dtype) -> list[int]:
    top = MAX_BYTES // torch.tensor([], dtype=dtype).element_size()
    return [1, 2, 3, 7, 8, 31, 64, 127, 1000, 2048, 4095, 8192, 32769, top - 7, top - 1, top]


def _fast(comm: Communicator) -> SymmAllReduce:
    """The instance `init_distributed` set up, as the engine's layers use it."""
    assert comm.fast is not None, ("symmetric memory did not come up (see the "
                                   "custom_all_reduce log line)")
    return comm.fast


def _check_exact(rank, world, comm, device) -> list[str]:
    """Integer messages: symmetric memory == NCCL == the exact sum, bit for bit."""
    cases, seed = [], 0
    for dtype in (torch.bfloat16, torch.float32):
        cases += [(dtype, (n,), "") for n in _sizes(dtype)]
        cases += [(dtype, (3, 2048), ""), (dtype, (5, 33), ""), (dtype, (64, 64), "strided"),
                  (dtype, (1000,), "offset"), (dtype, (1000,), "offset16")]
    fast = _fast(comm)
    for dtype, shape, layout in cases:
        seed += 1
        base = _ints(rank, shape, dtype, seed).to(device)
        x, ref = _layout(base, layout), base.clone()
        assert fast.fits(x), (dtype, shape, layout)
        got = fast.all_reduce(x)
        dist.all_reduce(ref)
        want = _exact_sum(world, shape, dtype, seed)
        assert torch.equal(ref.cpu(), want), f"NCCL {dtype} {shape}"
        assert torch.equal(got.cpu(), want), f"symm {dtype} {shape} {layout}"
    lines = [f"{len(cases)} integer cases exact (bf16, fp32, 1 element .. {MAX_BYTES} B)"]
    return lines + _check_dispatch(rank, world, comm)


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as a column-major view, or at a storage offset of 1 element or 16 bytes
    (misaligned: the padded path; aligned: the direct one)."""
    if layout == "strided":
        return x.t().contiguous().t()
    if layout.startswith("offset"):
        skip = 16 // x.element_size() if layout == "offset16" else 1
        flat = x.reshape(-1)
        return torch.cat([flat.new_zeros(skip), flat])[skip:].view(x.shape)
    return x


def _check_dispatch(rank, world, comm) -> list[str]:
    """`Communicator.all_reduce`: NCCL beyond the threshold and for fp16 / fp64, same sums."""
    top = MAX_BYTES // 2
    for seed, (dtype, n) in enumerate([(torch.bfloat16, top + 8), (torch.float16, 100),
                                       (torch.float64, 100), (torch.float32, 3 * top)], 900):
        x = _ints(rank, (n,), dtype, seed).cuda()
        assert not comm.fast.fits(x)
        assert torch.equal(comm.all_reduce(x).cpu(), _exact_sum(world, (n,), dtype, seed))
    return ["Communicator: NCCL beyond the threshold and for fp16 / fp64, exact"]


def _check_floats(rank, world, comm, device) -> list[str]:
    """Random floats: every rank's symmetric-memory sum has the same bits, and it and NCCL's
    are within the rounding bound of world - 1 additions of the exact (fp64) sum."""
    lines, fast = [], _fast(comm)
    for dtype, unit in ((torch.bfloat16, 2.0 ** -8), (torch.float32, 2.0 ** -24)):
        gen = torch.Generator(device=device).manual_seed(rank + 7)
        x = torch.randn(4095, generator=gen, device=device).to(dtype)
        inputs = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(inputs, x)
        exact = sum(t.double() for t in inputs)
        bound = 1.01 * (world - 1) * unit * sum(t.double().abs() for t in inputs)
        got, ref = fast.all_reduce(x.clone()), x.clone()
        dist.all_reduce(ref)
        ranks = [torch.empty_like(got) for _ in range(world)]
        dist.all_gather(ranks, got)
        assert all(torch.equal(r, ranks[0]) for r in ranks), f"{dtype}: ranks differ"
        for who, y in (("symm", got), ("NCCL", ref)):
            assert ((y.double() - exact).abs() <= bound).all(), f"{dtype}: {who} off the bound"
        err = (got.float() - ref.float()).abs().max().item()
        lines.append(f"{dtype}: ranks bitwise equal, within the rounding bound, "
                     f"max |symm - NCCL| {err:.1e}")
    return lines


def _check_graph(rank, world, comm, device) -> list[str]:
    """One CUDA graph of several all-reduces (symmetric memory and NCCL, back-to-back reuse of
    the buffer), replayed three times with new integer inputs."""
    top = MAX_BYTES // 2
    cases = [(torch.bfloat16, 1), (torch.bfloat16, 2048), (torch.float32, 7),
             (torch.bfloat16, 4095), (torch.float32, top // 2), (torch.bfloat16, top + 8)]
    _fast(comm)
    xs = [torch.zeros(n, dtype=dtype, device=device) for dtype, n in cases]
    graph = _capture(_graph_body(comm, xs))
    for trial in range(3):
        seeds = [500 + 10 * trial + i for i in range(len(cases))]
        for x, (dtype, n), seed in zip(xs, cases, seeds):
            x.copy_(_ints(rank, (n,), dtype, seed))
        graph.replay()
        torch.cuda.synchronize()
        for i, (x, (dtype, n), seed) in enumerate(zip(xs, cases, seeds)):
            want = _exact_sum(world, (n,), dtype, seed) * (world if i == 0 else 1)
            assert torch.equal(x.cpu(), want), f"graph: {dtype} {n}, trial {trial}"
    return [f"CUDA graph of {len(cases) + 1} all-reduces (symm and NCCL), 3 replays exact"]


def _graph_body(comm: Communicator, xs: list[torch.Tensor]):
    def run() -> None:
        comm.all_reduce(xs[0])
        comm.all_reduce(xs[0])  # the same buffer at once again: world x the sum
        for x in xs[1:]:
            comm.all_reduce(x)
    return run


def _capture(run) -> torch.cuda.CUDAGraph:
    """Warm up on a side stream (NCCL's communicator), then capture."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    torch.cuda.synchronize()
    return graph


def _check_norm(rank, world, comm, device) -> list[str]:
    """`Communicator.all_reduce_add_rms_norm` (the norm after a layer's partial sums): with the
    barrier-free path, one kernel equal to all_reduce + add_rms_norm (the sum + residual bit
    for bit, the norm within bf16 rounding), the same bits on every rank, eager and replayed
    from a CUDA graph; without it, None (the caller reduces, then norms)."""
    from qnext.kernels.expert_rows import ExpertRows
    from qnext.kernels.norm import add_rms_norm

    shapes, seeds = [(1, 2048), (7, 2048), (128, 2048), (3, 100)], range(700, 704)
    operands = [_norm_operands(rank, shape, seed, device) for shape, seed in zip(shapes, seeds)]
    if comm.fast.lamport is None:
        assert all(comm.all_reduce_add_rms_norm(*ops) is None for ops in operands)
        return ["add + norm: not fused without the barrier-free path"]
    for x, residual, weight, eps in operands:
        y, h = comm.all_reduce_add_rms_norm(x, residual, weight, eps)
        want_y, want_h = add_rms_norm(comm.all_reduce(x.clone()), weight, eps, residual)
        assert torch.equal(h, want_h), tuple(x.shape)
        assert _rel(y, want_y) <= 1e-2, tuple(x.shape)
        for out in (y, h):
            ranks = [torch.empty_like(out) for _ in range(world)]
            dist.all_gather(ranks, out)
            assert all(torch.equal(r, ranks[0]) for r in ranks), tuple(x.shape)
    for x, residual, weight, eps in operands[:2]:  # MoE rows, 3 a token, the last id dropped
        stacked = torch.cat([x, 0.5 * x, 2 * x], dim=1).reshape(-1, x.shape[1])
        rows = ExpertRows(stacked.contiguous(),
                          torch.tensor([[0, 1, 5]] * x.shape[0], device=device), 5)
        y, h = comm.all_reduce_add_rms_norm(rows, residual, weight, eps)
        want_y, want_h = add_rms_norm(comm.all_reduce(rows.combine()), weight, eps, residual)
        assert torch.equal(h, want_h) and _rel(y, want_y) <= 1e-2, tuple(x.shape)
    x, residual, weight, eps = operands[1]
    outs: list = []
    graph = _capture(lambda: outs.append(comm.all_reduce_add_rms_norm(x, residual, weight, eps)))
    for seed in (710, 711):
        x.copy_(_norm_operands(rank, x.shape, seed, device)[0])
        graph.replay()
        want_y, want_h = add_rms_norm(comm.all_reduce(x.clone()), weight, eps, residual)
        assert torch.equal(outs[-1][1], want_h) and _rel(outs[-1][0], want_y) <= 1e-2, seed
    return [f"add + norm fused: {len(shapes)} shapes eager (and MoE rows summed in the kernel) "
            "and 2 graph replays match all_reduce + add_rms_norm"]


def _norm_operands(rank: int, shape, seed: int, device) -> tuple:
    """(this rank's partial, residual, weight, eps): random bf16, the last three shared."""
    gen = torch.Generator().manual_seed(seed)
    residual = torch.randn(shape, generator=gen)
    weight = 0.1 * torch.randn(shape[1:], generator=gen)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed * 10 + rank))
    return (x.to(device, torch.bfloat16), residual.to(device, torch.bfloat16),
            weight.to(device, torch.bfloat16), 1e-6)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


CHECKS = {"exact": _check_exact, "floats": _check_floats, "graph": _check_graph,
          "norm": _check_norm}


def _rank_main(rank: int, world: int, port: int, check: str, result_file: str,
               lamport: bool) -> None:
    os.environ["QNEXT_LAMPORT_ALLREDUCE"] = "1" if lamport else "0"
    reset_tp_info()
    device = torch.device("cuda", rank)
    tp = init_distributed(rank, world, f"tcp://127.0.0.1:{port}", f"cuda:{rank}")
    lines = CHECKS[check](rank, world, tp.comm, device)
    dist.barrier()
    if rank == 0:
        Path(result_file).write_text("\n".join(lines) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # NOTE: skip interpreter teardown (gloo / NCCL threads), as the TP tests do


def _spawn(world: int, check: str, tmp_path: Path, lamport: bool) -> str:
    """Run `check` on `world` ranks; kill them all past DEADLINE_S."""
    result_file = tmp_path / f"{check}_{world}.txt"
    ctx = mp.start_processes(_rank_main, args=(world, free_port(), check, str(result_file),
                                               lamport),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"{check} on {world} GPUs: no result after {DEADLINE_S} s (a hang)")
    return result_file.read_text()


WORLDS = [2, pytest.param(4, marks=pytest.mark.skipif(
    torch.cuda.device_count() < 4, reason="needs four CUDA GPUs"))]


@pytest.mark.parametrize("lamport", [False, True], ids=["one-shot", "lamport"])
@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("check", list(CHECKS))
def test_symm_all_reduce_matches_nccl(world, check, lamport, tmp_path):
    """Both small-message paths: torch's one-shot kernel, and (QNEXT_LAMPORT_ALLREDUCE=1) the
    barrier-free kernel for contiguous bf16 messages."""
    report = _spawn(world, check, tmp_path, lamport)
    print(f"\n[{world} GPUs, {check}, {'lamport' if lamport else 'one-shot'}]\n{report}",
          end="")
