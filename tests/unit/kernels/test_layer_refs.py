"""Layer references: package exports, RMS norms, MoE routing/experts, RoPE, paged attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qnext.kernels as K
from qnext.kernels import (
    apply_rope_ref,
    fused_moe_ref,
    gated_rms_norm_ref,
    kv_locs_ref,
    moe_route_ref,
    paged_attention_ref,
    rms_norm_ref,
    rope_cos_sin_ref,
    store_kv_ref,
)
from tests.unit.kernels.helpers import TOL, cu, maxdiff


# --------------------------------------------------------------------------- exports


def test_all_exports_resolve():
    assert len(K.__all__) == len(set(K.__all__)) == 18
    assert K.__all__ == sorted(K.__all__)
    for name in K.__all__:
        assert callable(getattr(K, name)), name


# --------------------------------------------------------------------------- norms


def test_rms_norm_and_fused_add():
    torch.manual_seed(11)
    x, res, w = torch.randn(4, 32), torch.randn(4, 32), torch.randn(32) * 0.1
    expect = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * (1 + w)
    assert maxdiff(rms_norm_ref(x, w, 1e-6), expect) < TOL
    y, s = rms_norm_ref(x, w, 1e-6, residual=res)
    assert torch.equal(s, x + res)
    assert maxdiff(y, rms_norm_ref(x + res, w, 1e-6)) == 0.0
    xb = x.bfloat16()
    yb = rms_norm_ref(xb, w.bfloat16(), 1e-6)
    assert yb.dtype == torch.bfloat16 and maxdiff(yb, expect) < 5e-2


def test_gated_rms_norm():
    torch.manual_seed(12)
    x, z, w = torch.randn(5, 4, 16), torch.randn(5, 4, 16), torch.rand(16) + 0.5
    n = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)
    expect = w * n * z * torch.sigmoid(z)
    assert maxdiff(gated_rms_norm_ref(x, z, w, 1e-6), expect) < TOL
    yb = gated_rms_norm_ref(x.bfloat16(), z.bfloat16(), w.bfloat16(), 1e-6)
    assert yb.dtype == torch.bfloat16 and maxdiff(yb, expect) < 5e-2


# --------------------------------------------------------------------------- MoE


def _naive_moe(x, w13, w2, weights, ids):
    out = torch.zeros_like(x)
    inter = w13.shape[1] // 2
    for t in range(x.shape[0]):
        for wt, e in zip(weights[t].tolist(), ids[t].tolist(), strict=True):
            if not 0 <= e < w13.shape[0]:
                continue
            h = w13[e] @ x[t]
            out[t] += wt * (w2[e] @ (F.silu(h[:inter]) * h[inter:]))
    return out


@pytest.mark.parametrize("renormalize", [True, False])
def test_moe_route_and_fused(renormalize):
    torch.manual_seed(13)
    T, H, inter, E, topk = 7, 12, 6, 5, 2
    x = torch.randn(T, H)
    w13, w2 = torch.randn(E, 2 * inter, H) * 0.3, torch.randn(E, H, inter) * 0.3
    logits = torch.randn(T, E)
    weights, ids = moe_route_ref(logits, topk, renormalize)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int64 and ids.shape == (T, topk)
    probs = torch.softmax(logits, -1)
    for t in range(T):
        order = sorted(range(E), key=lambda e: -probs[t, e].item())[:topk]
        assert ids[t].tolist() == order
        expect = probs[t, order] / (probs[t, order].sum() if renormalize else 1.0)
        assert maxdiff(weights[t], expect) < 1e-6
    assert (
        maxdiff(fused_moe_ref(x, w13, w2, weights, ids), _naive_moe(x, w13, w2, weights, ids))
        < TOL
    )


def test_moe_skips_out_of_range_ids():
    torch.manual_seed(14)
    T, H, inter, E = 4, 8, 4, 3
    x = torch.randn(T, H)
    w13, w2 = torch.randn(E, 2 * inter, H), torch.randn(E, H, inter)
    ids = torch.tensor([[0, 5], [-1, 2], [1, 1], [7, -3]])
    weights = torch.rand(T, 2)
    out = fused_moe_ref(x, w13, w2, weights, ids)
    assert maxdiff(out, _naive_moe(x, w13, w2, weights, ids)) < 1e-4
    assert out[3].abs().sum() == 0 and out[0].abs().sum() > 0
    out_bf = fused_moe_ref(x.bfloat16(), w13.bfloat16(), w2.bfloat16(), weights, ids)
    assert out_bf.dtype == torch.bfloat16


# --------------------------------------------------------------------------- RoPE


def test_rope_matches_complex_rotation():
    torch.manual_seed(15)
    T, H, D, R, theta = 6, 3, 16, 8, 10000.0
    pos = torch.tensor([0, 1, 5, 17, 100, 3])
    x = torch.randn(T, H, D)
    cos, sin = rope_cos_sin_ref(pos, R, theta, torch.float32)
    assert cos.shape == (T, R) and torch.allclose(cos[0], torch.ones(R))
    y = apply_rope_ref(x, cos, sin)
    half = R // 2
    angle = pos.double()[:, None] / theta ** (torch.arange(half).double() * 2 / R)  # [T, R/2]
    z = (
        torch.complex(x[..., :half].double(), x[..., half:R].double())
        * torch.polar(torch.ones_like(angle), angle)[:, None]
    )
    assert maxdiff(y[..., :half], z.real) < 1e-4 and maxdiff(y[..., half:R], z.imag) < 1e-4
    assert torch.equal(y[..., R:], x[..., R:])
    yb = apply_rope_ref(x.bfloat16(), *rope_cos_sin_ref(pos, R, theta, torch.bfloat16))
    assert yb.dtype == torch.bfloat16 and torch.equal(yb[..., R:], x.bfloat16()[..., R:])


# --------------------------------------------------------------------------- paged attention


def test_kv_locs_ref():
    row = torch.tensor([9, 2, 5])
    assert kv_locs_ref(row, 2, 9, 4).tolist() == [38, 39, 8, 9, 10, 11, 20]


@pytest.mark.parametrize("page_size", [1, 4])
def test_paged_attention_matches_sdpa(page_size):
    torch.manual_seed(16 + page_size)
    hq, hkv, D = 4, 2, 8
    new_lens, seq_lens = [3, 1, 6], [10, 7, 6]  # prefixes 7, 6, 0
    B, num_pages = len(seq_lens), 64 // page_size
    max_pages = -(-max(seq_lens) // page_size)
    perm = torch.randperm(num_pages)[: B * max_pages].view(B, max_pages)  # non-contiguous pages
    k_cache, v_cache = (
        torch.zeros(num_pages * page_size, hkv, D),
        torch.zeros(num_pages * page_size, hkv, D),
    )
    full_k = [torch.randn(L, hkv, D) for L in seq_lens]
    full_v = [torch.randn(L, hkv, D) for L in seq_lens]
    for b, L in enumerate(seq_lens):
        store_kv_ref(k_cache, v_cache, kv_locs_ref(perm[b], 0, L, page_size), full_k[b], full_v[b])
    q = torch.randn(sum(new_lens), hq, D)
    scale = D**-0.5
    out = paged_attention_ref(
        q,
        k_cache,
        v_cache,
        cu_seqlens=cu(new_lens),
        seq_lens=torch.tensor(seq_lens),
        page_table=perm,
        page_size=page_size,
        scale=scale,
    )
    assert out.shape == q.shape
    s = 0
    for b, (n, L) in enumerate(zip(new_lens, seq_lens, strict=True)):
        prefix = L - n
        mask = torch.arange(L)[None, :] <= (torch.arange(n)[:, None] + prefix)  # True = attend
        kk = full_k[b].repeat_interleave(hq // hkv, 1).transpose(0, 1)
        vv = full_v[b].repeat_interleave(hq // hkv, 1).transpose(0, 1)
        ref = F.scaled_dot_product_attention(
            q[s : s + n].transpose(0, 1), kk, vv, attn_mask=mask, scale=scale
        )
        assert maxdiff(out[s : s + n], ref.transpose(0, 1)) < TOL
        s += n


def test_store_kv_casts_into_cache():
    k_cache = torch.zeros(8, 1, 2, dtype=torch.bfloat16)
    v_cache = torch.zeros(8, 1, 2, dtype=torch.bfloat16)
    k, v = torch.ones(2, 1, 2), torch.full((2, 1, 2), 2.0)
    store_kv_ref(k_cache, v_cache, torch.tensor([6, 1]), k, v)
    assert k_cache.dtype == torch.bfloat16
    assert k_cache[[6, 1]].float().eq(1).all() and v_cache[[6, 1]].float().eq(2).all()
    assert k_cache[[0, 2, 3, 4, 5, 7]].abs().sum() == 0
