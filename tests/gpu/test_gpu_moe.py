"""The Triton MoE kernels against their torch references: routing (softmax top-k) vs
`moe_route_ref`, the sort/align layout checked row by row, and `fused_moe` vs `fused_moe_ref` —
fresh random inputs, freed memory poisoned with NaN first (the launchers allocate with
torch.empty), odd H / I / E, T = 1 .. 300, dropped ids (expert parallelism), both tile configs;
Qwen3-Next shapes and bf16 on the GPU only."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS, ON_GPU, generator  # noqa: E402
from tests.gpu.kernel_env import poison as _poison  # noqa: E402

pytestmark = KERNEL_MARKS

from qnext.kernels import fused_moe_ref, moe_route_ref  # noqa: E402
from tests.unit.kernels.helpers import rel_err  # noqa: E402

DTYPES = [(torch.float32, 1e-3)] + ([(torch.bfloat16, 1e-2)] if ON_GPU else [])
PREFILL = dict(block_m=64, block_n1=64, block_k1=64, block_n2=128, block_k2=64, num_warps=8,
               num_stages=3)
SMALL_K = dict(block_m=16, block_n1=16, block_k1=32, block_n2=32, block_k2=16)


def _ids(gen, T, k, E, dropped=0.0):
    """Distinct experts per token (random top-k); a fraction replaced by ids outside [0, E)."""
    ids = torch.rand(T, E, generator=gen, device=DEVICE).argsort(dim=1)[:, :k]
    drop = torch.rand(T, k, generator=gen, device=DEVICE) < dropped
    other = torch.randint(-3, 3, (T, k), generator=gen, device=DEVICE)
    return torch.where(drop, torch.where(other < 0, other, E + other), ids)


@pytest.mark.parametrize("T,E,k", [(1, 7, 3), (5, 16, 4), (33, 8, 2), (300, 64, 10)]
                         + ([(64, 512, 10), (2048, 512, 10)] if ON_GPU else []))
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shared", [False, True])
def test_route_matches_reference(T, E, k, renormalize, dtype, shared):
    """shared: one more logit column, the fused shared expert's gate (picked last by all)."""
    from qnext.kernels.moe_route import moe_route

    # distinct logits, exact in bf16 (steps of 8/E within [-4, 4)): no ties to order differently
    order = torch.rand(T, E + shared, generator=generator(T + E), device=DEVICE).argsort(dim=1)
    logits = ((order - E // 2) * (8 / E)).to(dtype)
    want_w, want_ids = moe_route_ref(logits, k, renormalize, shared)
    _poison()
    got_w, got_ids = moe_route(logits, k, renormalize, shared)
    assert got_ids.shape == (T, k + shared) and (not shared or (got_ids[:, -1] == E).all())
    assert not torch.isnan(got_w).any()
    assert torch.equal(got_ids, want_ids)
    assert rel_err(got_w, want_w) <= 1e-5


ROW8 = [0.5, -0.0, 2.0, 0.0, 2.0, -1.0, 2.0, 0.5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("row,k,shared,want", [
    (ROW8 + [-5.0] * 504, 6, False, [2, 4, 6, 0, 7, 1]),  # 512 experts
    (ROW8, 5, False, [2, 4, 6, 0, 7]),
    ([-0.0, 2.0, 0.0, 2.0, 0.3], 4, True, [1, 3, 0, 2, 4])])  # k' > E: the arg-max loop
def test_route_ties_go_in_index_order(dtype, row, k, shared, want):
    """Equal logits (-0.0 equal to 0.0) are picked lowest index first; the weights are the
    reference's, in its descending order (bf16 logits: the half-width keys)."""
    from qnext.kernels.moe_route import moe_route

    logits = torch.tensor([row], device=DEVICE).to(dtype)
    got_w, got_ids = moe_route(logits, k, True, shared)
    assert got_ids.tolist() == [want]
    want_w, _ = moe_route_ref(logits, k, True, shared)
    assert rel_err(got_w, want_w) <= 1e-6


@pytest.mark.parametrize("T,E,k,block_m,chunk", [
    (1, 7, 3, 16, 1024), (5, 16, 4, 16, 16), (70, 8, 2, 64, 16), (300, 64, 10, 16, 256),
    (300, 5, 3, 32, 1024), (1, 513, 11, 16, 1024), (8, 12, 8, 16, 1024), (32, 2, 2, 16, 1024),
    (11, 513, 11, 16, 1024)])
def test_align_layout(T, E, k, block_m, chunk):
    from qnext.kernels.moe_align import moe_align

    ids = _ids(generator(T * k), T, k, E, dropped=0.2)
    _poison()
    sorted_ids, block_expert, num_padded = moe_align(ids, E, block_m, chunk=chunk)
    flat, n, used = ids.flatten().cpu(), T * k, int(num_padded.item())
    counts = torch.bincount(flat[(flat >= 0) & (flat < E)], minlength=E)
    assert used == int(((counts + block_m - 1) // block_m * block_m).sum())
    rows = sorted_ids[:used].cpu().view(-1, block_m)
    experts = block_expert.cpu()
    assert torch.all(experts[used // block_m:] == -1)
    for e in range(E):
        mine = rows[experts[:used // block_m] == e].flatten()
        real = mine[mine < n]
        assert torch.equal(real, torch.nonzero(flat == e).flatten().to(real.dtype))
        assert torch.all(mine[len(real):] == n)


def _moe_inputs(T, H, E, k, I, dtype, seed, dropped=0.0):
    gen = generator(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=DEVICE) * scale).to(dtype)

    x, w13, w2 = r(T, H), r(E, 2 * I, H, scale=H**-0.5), r(E, H, I, scale=I**-0.5)
    weights = torch.rand(T, k, generator=gen, device=DEVICE) + 0.1
    return x, w13, w2, weights, _ids(gen, T, k, E, dropped)


SMALL = [(1, 96, 7, 3, 40), (5, 96, 7, 3, 40), (33, 64, 8, 2, 32), (300, 48, 16, 4, 24)]
QWEN = [(1, 2048, 512, 10, 512), (64, 2048, 512, 10, 128), (256, 2048, 512, 10, 512),
        (2048, 2048, 512, 10, 128), (8, 2048, 512, 11, 128)]
# the small shapes with each tile config in the dtype of the run (the interpreter: fp32 only;
# the GPU: bf16, and small_k left to the interpreter to save compile time); the GPU adds the
# Qwen3-Next shapes (TP1 I = 512, TP4 I = 128), default tiles, fp32 and bf16. "default" takes
# the GEMVs for decode batches (≤ 128 assignments), "grouped" the grouped GEMMs there too
MAIN = DTYPES[-1]
TILES = ("default", "prefill", "grouped") if ON_GPU else ("default", "prefill", "small_k",
                                                          "grouped")
CASES = [(*s, *MAIN, t) for s in SMALL for t in TILES] \
    + ([(*s, torch.float32, 1e-3, "default") for s in QWEN[:2]]
       + [(*s, *MAIN, "default") for s in QWEN]
       + [(*QWEN[0], *MAIN, "grouped"), (*QWEN[-1], *MAIN, "grouped")] if ON_GPU else [])


@pytest.mark.parametrize("T,H,E,k,I,dtype,tol,tiles", CASES)
def test_fused_moe_matches_reference(T, H, E, k, I, dtype, tol, tiles):
    from qnext.kernels.moe import MoeConfig, fused_moe

    config = {"default": None, "prefill": MoeConfig(**PREFILL),
              "small_k": MoeConfig(**SMALL_K), "grouped": MoeConfig()}[tiles]
    x, w13, w2, weights, ids = _moe_inputs(T, H, E, k, I, dtype, T * 7 + H, dropped=0.1)
    want = fused_moe_ref(x, w13, w2, weights, ids)
    _poison()
    got = fused_moe(x, w13, w2, weights, ids, config)
    assert got.dtype == x.dtype and not torch.isnan(got).any()
    assert rel_err(got, want) <= tol


def test_all_ids_dropped_gives_zeros():
    from qnext.kernels.moe import MoeConfig, fused_moe

    x, w13, w2, weights, ids = _moe_inputs(4, 40, 5, 2, 24, torch.float32, 3)
    for config in (MoeConfig(), MoeConfig(gemv=True)):
        _poison()
        got = fused_moe(x, w13, w2, weights, torch.full_like(ids, 5), config)
        assert torch.equal(got, torch.zeros_like(got))


def test_launchers_reject_bad_shapes():
    from qnext.kernels.moe import fused_moe
    from qnext.kernels.moe_align import moe_align
    from qnext.kernels.moe_route import moe_route

    x, w13, w2, weights, ids = _moe_inputs(3, 32, 4, 2, 16, torch.float32, 1)
    with pytest.raises(ValueError, match="w2"):
        fused_moe(x, w13, w2[:, :, :8], weights, ids)
    with pytest.raises(ValueError, match="w13"):
        fused_moe(x, w13[:, :31], w2, weights, ids)
    with pytest.raises(ValueError, match="topk"):
        fused_moe(x, w13, w2, weights[:2], ids)
    with pytest.raises(ValueError, match="x must"):
        fused_moe(x.t(), w13, w2, weights, ids)
    with pytest.raises(ValueError, match="top_k"):
        moe_route(torch.randn(3, 4, device=DEVICE), 5, True)
    with pytest.raises(ValueError, match="block_m"):
        moe_align(ids, 4, 24)


@pytest.mark.parametrize("T,E,k,shared", [(1, 7, 3, False), (1, 512, 10, True),
                                          (5, 512, 10, True), (4, 16, 16, False),
                                          (3, 64, 4, True), (8, 512, 10, True),
                                          (11, 512, 10, True)])
@pytest.mark.parametrize("renormalize", [True, False])
def test_route_align_in_one_launch_equals_the_two(T, E, k, shared, renormalize):
    """`moe_route_align` (decode batches) gives the ids and layout of `moe_route` followed by
    `moe_align`, its weights up to rounding (the two kernels compile the shared softmax
    differently: the last bit differs for some rows on an H200), and `fused_moe_routed` the
    mixture of `fused_moe_ref`."""
    from qnext.kernels.moe import fused_moe_routed
    from qnext.kernels.moe_align import moe_align
    from qnext.kernels.moe_route import moe_route
    from qnext.kernels.moe_route_align import moe_route_align

    order = torch.rand(T, E + shared, generator=generator(T + E), device=DEVICE).argsort(dim=1)
    wide = torch.full((T, E + shared + 7), float("nan"), device=DEVICE)  # a padded router
    wide[:, :E + shared] = (order - E // 2) * (8 / E)  # distinct: no ties
    logits = wide[:, :E + shared]  # as layers/moe.py slices it: rows of stride E + shared + 7
    want_w, want_ids = moe_route(logits, k, renormalize, shared)
    want = moe_align(want_ids, E + shared, 16)
    _poison()
    got_w, got_ids, got = moe_route_align(logits, k, renormalize, shared, 16)
    assert torch.equal(got_ids, want_ids)
    torch.testing.assert_close(got_w, want_w, rtol=1e-6, atol=0)
    used = int(want[2].item())
    assert torch.equal(got[2], want[2]) and torch.equal(got[1], want[1])
    assert torch.equal(got[0][:used], want[0][:used])
    x, w13, w2, _, _ = _moe_inputs(T, 48, E + shared, k, 32, torch.float32, 11)
    ref = fused_moe_ref(x, w13, w2, *moe_route_ref(logits, k, renormalize, shared))
    assert rel_err(fused_moe_routed(x, w13, w2, logits, k, renormalize, shared), ref) <= 1e-3


def test_route_align_rejects_batches_past_its_limit():
    from qnext.kernels.moe_route_align import moe_route_align, takes

    logits = torch.randn(12, 513, device=DEVICE)
    assert takes(11, 10, True) and not takes(12, 10, True) and not takes(0, 10, True)
    with pytest.raises(ValueError, match="exceed"):
        moe_route_align(logits, 10, True, True, 16)


def test_expert_rows_combine_to_the_mixture():
    """combine=False hands out the weighted rows before the per-token sum (what the fused
    all-reduce + norm consumes); their combine is the mixture, bit for bit (grouped GEMMs and
    GEMVs alike)."""
    from qnext.kernels.moe import MoeConfig, fused_moe

    x, w13, w2, weights, ids = _moe_inputs(5, 96, 7, 3, 40, torch.float32, 21, dropped=0.2)
    for config in (MoeConfig(), MoeConfig(gemv=True)):
        rows = fused_moe(x, w13, w2, weights, ids, config, combine=False)
        assert rows.rows.shape == (15, 96) and rows.ids is ids and rows.num_experts == 7
        assert torch.equal(rows.combine(), fused_moe(x, w13, w2, weights, ids, config))


def test_shared_hint_changes_no_row():
    """`shared=True` (GEMM 1's programs of every token's last slot load expert E - 1 before
    the routing) gives the rows of `shared=False` bit for bit, whether that slot holds E - 1,
    another expert or a dropped id."""
    from qnext.kernels.moe import MoeConfig, fused_moe

    x, w13, w2, weights, ids = _moe_inputs(6, 96, 7, 3, 40, torch.float32, 23, dropped=0.2)
    ids[:3, -1] = 6  # E - 1 in the last slot of half the tokens, drawn ids in the rest
    config = MoeConfig(gemv=True)
    want = fused_moe(x, w13, w2, weights, ids, config, combine=False).rows
    got = fused_moe(x, w13, w2, weights, ids, config, combine=False, shared=True).rows
    keep = ((ids >= 0) & (ids < 7)).reshape(-1, 1)  # dropped assignments' rows stay unset
    assert torch.equal(torch.where(keep, got, 0), torch.where(keep, want, 0))


@pytest.mark.parametrize("T", [1, 9, 40])
def test_moe_from_hidden_matches_the_reference(T):
    """`fused_moe_from_hidden` (the layer's call: router included; decode batches route in
    the router's launch and run the GEMVs, bigger ones the GEMM and the grouped path) equals
    `fused_moe_ref` of `moe_route_ref` of the router's logits; padding rows are not read."""
    import torch.nn.functional as F

    from qnext.kernels.moe import fused_moe_from_hidden

    dtype, tol = MAIN
    H, E, k, I = 64, 12, 3, 32
    x, w13, w2, _, _ = _moe_inputs(T, H, E + 1, k, I, dtype, 31 + T)
    router = torch.full((E + 1 + 3, H), float("nan"), device=DEVICE, dtype=dtype)
    router[:E + 1] = (torch.randn(E + 1, H, generator=generator(T), device=DEVICE)
                      * H**-0.5).to(dtype)
    want = fused_moe_ref(x, w13, w2, *moe_route_ref(F.linear(x, router[:E + 1]), k, True,
                                                     True))
    got = fused_moe_from_hidden(x, router, E + 1, w13, w2, k, True, True)
    assert not torch.isnan(got).any() and rel_err(got, want) <= tol


@pytest.mark.skipif(not ON_GPU, reason="programmatic dependent launch needs a GPU")
@pytest.mark.parametrize("T,dropped,shared_last", [(1, 0.0, True), (11, 0.0, True),
                                                   (6, 0.3, True), (3, 0.0, False)])
def test_pdl_launches_equal_plain_ones_eager_and_in_a_graph(T, dropped, shared_last):
    """The decode chain as the model runs it (residual add + norm, router kernel, the two
    GEMVs) with programmatic dependent launch gives the plain launches' rows bit for bit,
    eagerly and replayed from a CUDA graph, three layers back to back (each launch's wait
    orders it after the one before; dropped ids still wait before they return). With PDL the
    norm lets the router launch as it starts, the router loads its weights before its wait and
    lets GEMM 1 launch as it starts, GEMM 1's programs of every token's last slot load the
    shared expert's weights before their wait (the `shared` hint; shared_last=False puts a
    routed expert there, so they must load again), and the down kernel lets the launch after
    it start."""
    from qnext.kernels.launch import pdl
    from qnext.kernels.moe_gemv import expert_rows_gemv
    from qnext.kernels.moe_router import route_hidden
    from qnext.kernels.norm import add_rms_norm

    if not pdl(torch.device(DEVICE)):
        pytest.skip("this GPU (or QNEXT_PDL=0) does not take programmatic dependent launch")
    H, E, k, I = 256, 16, 4, 64
    layers = [_moe_inputs(T, H, E + 1, k, I, torch.bfloat16, 40 + i, dropped) for i in range(3)]
    routers = [(torch.randn(E + 1, H, generator=generator(i), device=DEVICE) * H**-0.5)
               .to(torch.bfloat16) for i in range(3)]
    norm_w = torch.randn(H, generator=generator(9), device=DEVICE).to(torch.bfloat16)
    residual = torch.randn(T, H, generator=generator(8), device=DEVICE).to(torch.bfloat16)

    def chain(use_pdl, fixed_ids):
        rows = []
        for (x, w13, w2, _, ids), router in zip(layers, routers):
            x, _ = add_rms_norm(x, norm_w, 1e-6, residual)  # the router's predecessor
            tw, got_ids = route_hidden(x, router, E + 1, k, True, True, use_pdl=use_pdl)
            ids = torch.cat([ids, got_ids[:, k:]], 1) if fixed_ids else got_ids
            if not shared_last:  # the shared expert first, a routed one in the last slot
                ids, tw = ids.roll(1, 1), tw.roll(1, 1)
            y = torch.empty(ids.numel(), H, dtype=x.dtype, device=DEVICE)
            expert_rows_gemv(x, w13, w2, tw, ids.contiguous(), y, use_pdl=use_pdl,
                             shared=use_pdl)
            rows.append((ids.reshape(-1, 1), y))
        # masked after the chain, so that each down launch hands over to the next norm
        return [torch.where((ids >= 0) & (ids <= E), y, 0) for ids, y in rows]

    fixed = dropped > 0  # the drawn ids (with drops) replace the routing's top-k
    want = chain(False, fixed)
    _poison()
    assert all(torch.equal(g, w) for g, w in zip(chain(True, fixed), want))
    graph = torch.cuda.CUDAGraph()
    chain(True, fixed)
    with torch.cuda.graph(graph):
        got = chain(True, fixed)
    for g in got:
        g.fill_(float("nan"))
    graph.replay()
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    for x, *_ in layers:  # new inputs in place: no launch may take the last replay's rows
        x.mul_(-1.5).add_(0.25)
    want = chain(False, fixed)
    graph.replay()
    assert all(torch.equal(g, w) for g, w in zip(got, want))
