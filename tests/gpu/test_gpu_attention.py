"""The Triton paged-attention kernels (prefill and split-K decode) against `paged_attention_ref`:
fresh random pools, queries and scattered pages, outputs poisoned with NaN first; GQA 4:4, 6:2,
16:2 (TP1) and 4:1 (TP4); head dims 64 / 128 / 256 and an odd one; page sizes 1, 3, 16, 64;
mixed batches (fresh prefill, odd cached prefix, decode rows, an empty sequence), decode with
one or several splits; fp32 everywhere, bf16 on the GPU (the interpreter is unreliable there)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS, ON_GPU  # noqa: E402

pytestmark = KERNEL_MARKS

from qnext.kernels import paged_attention_ref  # noqa: E402
from qnext.kernels.launch import interpreting  # noqa: E402
from tests.unit.kernels.helpers import rel_err  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _interpreter_scalar_bounds():
    """Triton 3.6's interpreter holds scalars as 1-element arrays and turns them into loop
    bounds with int(), which numpy 2 refuses; the kernels loop up to loaded lengths."""
    if not interpreting():
        yield
        return
    import triton.runtime.interpreter as interp

    original = interp._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interp._patch_lang_tensor = patched
    yield
    interp._patch_lang_tensor = original


FP32 = [(torch.float32, 1e-3)]
DTYPES = FP32 + ([(torch.bfloat16, 1e-2)] if ON_GPU else [])


def _batch(seqs, hq, hkv, d, page_size, dtype, seed):
    """seqs: (cached prefix, new tokens) per sequence. Pages are scattered over a random pool
    (page 0, the padding target, included); table rows are padded with page 0."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    pages = [-(-(p + n) // page_size) for p, n in seqs]
    num_pages = sum(pages) + 3
    order = torch.randperm(num_pages, generator=gen, device=DEVICE).tolist()
    table = torch.zeros(len(seqs), max(max(pages), 1), dtype=torch.int32)
    used = 0
    for b, count in enumerate(pages):
        table[b, :count] = torch.tensor(order[used:used + count], dtype=torch.int32)
        used += count

    def r(*shape):
        return torch.randn(*shape, generator=gen, device=DEVICE).to(dtype)

    new = [n for _, n in seqs]
    return dict(
        q=r(sum(new), hq, d), k_cache=r(num_pages * page_size, hkv, d),
        v_cache=r(num_pages * page_size, hkv, d),
        cu_seqlens=torch.tensor([0] + new, device=DEVICE).cumsum(0),
        seq_lens=torch.tensor([p + n for p, n in seqs], device=DEVICE),
        page_table=table.to(DEVICE), page_size=page_size, scale=d ** -0.5)


def _check_against_ref(x, tol, **hints):
    from qnext.kernels.attention import paged_attention

    want = paged_attention_ref(**x)
    out = torch.full_like(x["q"], float("nan"))
    got = paged_attention(**x, out=out, **hints)
    assert got.data_ptr() == out.data_ptr()
    assert not torch.isnan(got).any()
    assert rel_err(got, want) <= tol, rel_err(got, want)


MIXED = [(0, 7), (5, 9), (13, 1), (0, 0), (40, 3), (0, 1)]
HEADS = [(4, 4, 64), (6, 2, 128), (16, 2, 64), (4, 1, 32), (4, 2, 40)]


@pytest.mark.parametrize("hq,hkv,d", HEADS)
@pytest.mark.parametrize("page_size", [1, 3, 16, 64])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_prefill_mixed_batch(hq, hkv, d, page_size, dtype, tol):
    x = _batch(MIXED, hq, hkv, d, page_size, dtype, seed=hq * 100 + d + page_size)
    _check_against_ref(x, tol, is_decode=False)


@pytest.mark.parametrize("seqs", [[(0, 37)], [(33, 20), (0, 1), (0, 64)], [(70, 0), (2, 31)]])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_prefill_tile_boundaries(seqs, dtype, tol):
    """Lengths around the tile sizes, a prefix that is not block aligned, a sequence with a
    cached context but no new token; `is_decode` left for the launcher to infer."""
    x = _batch(seqs, 16, 2, 256, 5, dtype, seed=len(seqs))
    _check_against_ref(x, tol)


@pytest.mark.parametrize("hq,hkv,d", HEADS[1:4])
@pytest.mark.parametrize("splits", [2, 5])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_prefill_key_splits(hq, hkv, d, splits, dtype, tol):
    """The prefill kernel with its keys cut in splits (what small grids over long prefixes
    take), merged: the mixed batch plus a long cached prefix, so that some splits of short
    tiles see no key (lse -inf) and causal blocks fall in the last splits; poisoned outputs
    and partial buffers."""
    x = _batch(MIXED + [(300, 40)], hq, hkv, d, 3, dtype, seed=hq + d + splits)
    torch.full((1 << 22,), float("nan"), device=DEVICE)  # freed at once: NaN blocks to reuse
    _check_against_ref(x, tol, is_decode=False, num_splits=splits)


def test_prefill_split_count():
    """Key splits only when the tiles leave SMs idle and the sequences are long: none past two
    waves of programs or below MIN_SPLIT_KEYS keys, at most 16, else the count whose last wave
    is fullest."""
    from qnext.kernels.attention_prefill import MIN_SPLIT_KEYS, prefill_splits
    from qnext.kernels.launch import num_sms

    q = torch.empty(1, 1, 1, device=DEVICE)
    sms = num_sms(q.device.index) if q.is_cuda else 4
    long = 64 * MIN_SPLIT_KEYS
    assert prefill_splits(q, 2 * sms, long) == 1
    assert prefill_splits(q, 1, MIN_SPLIT_KEYS - 1) == 1
    assert prefill_splits(q, 1, 3 * MIN_SPLIT_KEYS) == 3
    assert prefill_splits(q, 1, long) == min(2 * sms, 16)
    # sms + 1 programs: 2 splits fill 2 waves and a sliver, 4 fill 4 and a sliver: 4
    assert prefill_splits(q, sms + 1, long) == 4


@pytest.mark.parametrize("hq,hkv,d", HEADS)
@pytest.mark.parametrize("page_size", [1, 3, 16])
@pytest.mark.parametrize("splits", [1, 3, None])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_decode(hq, hkv, d, page_size, splits, dtype, tol):
    seqs = [(0, 1), (16, 1), (100, 1), (150, 1), (7, 1)]
    x = _batch(seqs, hq, hkv, d, page_size, dtype, seed=hq + d + page_size)
    _check_against_ref(x, tol, is_decode=True, num_splits=splits)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_decode_with_mostly_empty_splits(dtype, tol):
    """More splits than the short contexts fill (as a graph captured for the longest context
    runs): the empty splits write nothing and the merge reads only the used ones — the
    partial buffers come from an allocator filled with NaN first."""
    seqs = [(0, 1), (300, 1), (64, 1), (2, 1)]
    x = _batch(seqs, 6, 2, 64, 16, dtype, seed=9)
    torch.full((1 << 22,), float("nan"), device=DEVICE)  # freed at once: NaN blocks to reuse
    _check_against_ref(x, tol, is_decode=True, num_splits=64)


def test_decode_inferred_and_hinted():
    """T == B with one token each takes the decode kernel without a hint; a tight
    max_seqlen hint gives the same result as the page-table bound."""
    x = _batch([(20, 1), (3, 1), (64, 1)], 4, 1, 128, 16, torch.float32, seed=7)
    _check_against_ref(x, 1e-3)
    _check_against_ref(x, 1e-3, is_decode=True, max_seqlen=65)


@pytest.mark.skipif(not ON_GPU, reason="large shapes: GPU only")
@pytest.mark.parametrize("hq,hkv", [(16, 2), (4, 1)])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_qwen3_next_shapes(hq, hkv, dtype, tol):
    prefill = [(0, 1000), (3001, 517), (4095, 1), (0, 0), (250, 64)]
    _check_against_ref(_batch(prefill, hq, hkv, 256, 16, dtype, seed=1), tol)
    decode = [(4000, 1), (9000, 1), (1, 1), (777, 1)]
    for page_size in (1, 16, 64):
        x = _batch(decode, hq, hkv, 256, page_size, dtype, seed=page_size)
        _check_against_ref(x, tol, is_decode=True)


@pytest.mark.parametrize("mode,splits", [("prefill", 1), ("prefill", 3), ("decode", 1),
                                         ("decode", 3)])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_output_gate(mode, splits, dtype, tol):
    """gate: attention * sigmoid(gate), the gate a strided view of [q | gate] columns as the
    layer passes it, applied by whichever kernel writes the output (the one-split prefill and
    decode, the merge of splits)."""
    from qnext.kernels.attention import paged_attention

    seqs = MIXED if mode == "prefill" else [(0, 1), (100, 1), (37, 1)]
    x = _batch(seqs, 6, 2, 40, 3, dtype, seed=len(seqs) + (splits or 0))
    both = torch.randn(x["q"].shape[0], 6, 80, device=DEVICE).to(dtype)
    gate = both[..., 40:]  # [T, Hq, D], token stride 480, head stride 80
    want = paged_attention_ref(**x).float() * torch.sigmoid(gate.float())
    got = paged_attention(**x, is_decode=mode == "decode", num_splits=splits, gate=gate,
                          out=torch.full_like(x["q"], float("nan")))
    assert not torch.isnan(got).any() and rel_err(got, want) <= tol


def test_launcher_rejects_bad_shapes():
    from qnext.kernels.attention import paged_attention

    x = _batch([(3, 2), (0, 1)], 6, 2, 64, 4, torch.float32, seed=0)
    with pytest.raises(ValueError, match="multiple"):
        paged_attention(**{**x, "q": x["q"][:, :5]})
    with pytest.raises(ValueError, match="k_cache"):
        paged_attention(**{**x, "v_cache": x["v_cache"][:, :, :32]})
    with pytest.raises(ValueError, match="page_table"):
        paged_attention(**{**x, "page_table": x["page_table"][:1]})
    with pytest.raises(ValueError, match="share"):
        paged_attention(**{**x, "q": x["q"].double()})
    with pytest.raises(ValueError, match="contiguous"):
        paged_attention(**{**x, "q": x["q"].transpose(0, 2).contiguous().transpose(0, 2)})
    with pytest.raises(ValueError, match="one new token"):
        paged_attention(**x, is_decode=True)
    with pytest.raises(ValueError, match="page_size"):
        paged_attention(**{**x, "page_size": 0})
    with pytest.raises(ValueError, match="gate"):
        paged_attention(**x, gate=x["q"][:, :, :32])
