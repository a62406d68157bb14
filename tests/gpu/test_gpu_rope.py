"""The Triton partial-RoPE kernel against its torch reference: fresh random inputs, odd token
counts, rotary_dim < D (the model's 64 of 256) and == D, a half width that is not a power of
two, positions up to 1M (theta 1e7 and 1e4), q as the strided [q | gate] view of the
projection, fp32 and bf16; the dims past rotary_dim and the gate half stay bit-identical."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS, ON_GPU, generator  # noqa: E402

pytestmark = KERNEL_MARKS

from qnext.kernels import apply_rope_ref, rope_cos_sin_ref  # noqa: E402
from tests.unit.kernels.helpers import rel_err  # noqa: E402

CASES = [  # T, Hq, Hkv, D, rotary_dim, theta, max position
    (1, 16, 2, 256, 64, 1e7, 100),
    (7, 4, 2, 64, 64, 1e4, 5000),
    (33, 3, 1, 96, 48, 1e7, 1_000_000),
    (5, 16, 2, 256, 64, 1e7, 1_000_000),
]
if ON_GPU:
    CASES += [(8191, 16, 2, 256, 64, 1e7, 1_000_000), (257, 8, 1, 256, 256, 1e4, 40_000)]
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)]


@pytest.mark.parametrize("T,Hq,Hkv,D,R,theta,max_pos", CASES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_rope_matches_reference(T, Hq, Hkv, D, R, theta, max_pos, dtype, tol):
    from qnext.kernels.rope import apply_rope

    gen = generator(T * 7 + D)
    proj = torch.randn(T, Hq, 2 * D, generator=gen, device=DEVICE).to(dtype)
    q, gate = proj.chunk(2, dim=-1)  # q: head stride 2D, like the attention layer's view
    k = torch.randn(T, Hkv, D, generator=gen, device=DEVICE).to(dtype)
    positions = torch.randint(0, max_pos, (T,), generator=gen, device=DEVICE)
    positions[0] = max_pos - 1
    cos, sin = rope_cos_sin_ref(positions, R, theta, dtype)
    want_q, want_k = apply_rope_ref(q, cos, sin), apply_rope_ref(k, cos, sin)
    before_proj, before_k = proj.clone(), k.clone()
    got_q, got_k = apply_rope(q, k, positions, rotary_dim=R, theta=theta)
    assert got_q.data_ptr() == q.data_ptr() and got_k.data_ptr() == k.data_ptr()
    for got, want in ((got_q, want_q), (got_k, want_k)):
        assert not torch.isnan(got).any() and rel_err(got[..., :R], want[..., :R]) <= tol
    assert torch.equal(q[..., R:], before_proj[..., R:D])
    assert torch.equal(gate, before_proj[..., D:])
    assert torch.equal(k[..., R:], before_k[..., R:])


@pytest.mark.parametrize("T,Hq,Hkv,D,R,theta,max_pos", CASES[:3])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_rope_also_stores_k_and_v_in_the_cache(T, Hq, Hkv, D, R, theta, max_pos, dtype, tol):
    """kv_store: the rotated k and the given v (a strided view, like the projection's) land in
    the cache rows of kv_locs (scattered, out of order); every other row stays as it was."""
    from qnext.kernels import store_kv_ref
    from qnext.kernels.rope import apply_rope

    gen = generator(T * 5 + Hkv)
    q = torch.randn(T, Hq, D, generator=gen, device=DEVICE).to(dtype)
    kv = torch.randn(T, 2, Hkv, D, generator=gen, device=DEVICE).to(dtype)
    k, v = kv[:, 0].contiguous(), kv[:, 1]
    positions = torch.randint(0, max_pos, (T,), generator=gen, device=DEVICE)
    locs = torch.randperm(3 * T + 4, generator=gen, device=DEVICE)[:T]
    caches = [torch.randn(3 * T + 4, Hkv, D, generator=gen, device=DEVICE).to(dtype)
              for _ in range(2)]
    want = [c.clone() for c in caches]
    cos, sin = rope_cos_sin_ref(positions, R, theta, dtype)
    store_kv_ref(*want, locs, apply_rope_ref(k, cos, sin), v)
    apply_rope(q, k, positions, rotary_dim=R, theta=theta, kv_store=(*caches, locs, v))
    others = torch.ones(caches[0].shape[0], dtype=torch.bool, device=DEVICE)
    others[locs] = False
    for got, ref in zip(caches, want):
        assert rel_err(got[locs], ref[locs]) <= tol
        assert torch.equal(got[others], ref[others])


@pytest.mark.parametrize("T,Hq,Hkv,D,R,theta,max_pos", CASES[:3])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_rope_with_the_q_and_k_norms(T, Hq, Hkv, D, R, theta, max_pos, dtype, tol):
    """norms: the per-head RMSNorms of the attention layer first (q from the [q | gate] view),
    into new tensors, then the rotation and the cache store: the sources stay untouched."""
    from qnext.kernels import rms_norm_ref, store_kv_ref
    from qnext.kernels.rope import apply_rope

    gen = generator(T * 3 + D)
    proj = torch.randn(T, Hq, 2 * D, generator=gen, device=DEVICE).to(dtype)
    q = proj.chunk(2, dim=-1)[0]
    k, v = (torch.randn(T, Hkv, D, generator=gen, device=DEVICE).to(dtype) for _ in range(2))
    w_q, w_k = (0.1 * torch.randn(D, generator=gen, device=DEVICE).to(dtype) for _ in range(2))
    positions = torch.randint(0, max_pos, (T,), generator=gen, device=DEVICE)
    locs = torch.randperm(2 * T, generator=gen, device=DEVICE)[:T]
    caches = [torch.zeros(2 * T, Hkv, D, device=DEVICE, dtype=dtype) for _ in range(2)]
    want_caches = [c.clone() for c in caches]
    cos, sin = rope_cos_sin_ref(positions, R, theta, dtype)
    want_q = apply_rope_ref(rms_norm_ref(q, w_q, 1e-6), cos, sin)
    want_k = apply_rope_ref(rms_norm_ref(k, w_k, 1e-6), cos, sin)
    store_kv_ref(*want_caches, locs, want_k, v)
    before_proj, before_k = proj.clone(), k.clone()
    got_q, got_k = apply_rope(q, k, positions, rotary_dim=R, theta=theta,
                              kv_store=(*caches, locs, v), norms=(w_q, w_k, 1e-6))
    assert got_q.is_contiguous() and got_k.is_contiguous()
    assert torch.equal(proj, before_proj) and torch.equal(k, before_k)
    for got, want in ((got_q, want_q), (got_k, want_k), (caches[0][locs], want_caches[0][locs]),
                      (caches[1][locs], want_caches[1][locs])):
        assert not torch.isnan(got).any() and rel_err(got, want) <= tol


def test_rope_int32_positions_and_empty_batch():
    from qnext.kernels.rope import apply_rope

    gen = generator(11)
    q = torch.randn(3, 2, 32, generator=gen, device=DEVICE)
    k = torch.randn(3, 1, 32, generator=gen, device=DEVICE)
    positions = torch.tensor([0, 17, 123_456], device=DEVICE, dtype=torch.int32)
    cos, sin = rope_cos_sin_ref(positions, 16, 1e6, q.dtype)
    want = apply_rope_ref(q, cos, sin)
    apply_rope(q, k, positions, rotary_dim=16, theta=1e6)
    assert rel_err(q, want) <= 1e-5
    empty = torch.empty(0, 2, 32, device=DEVICE)
    apply_rope(empty, empty[:, :1], positions[:0], rotary_dim=16, theta=1e6)


def test_rope_rejects_bad_arguments():
    from qnext.kernels.rope import apply_rope

    q = torch.randn(4, 2, 32, device=DEVICE)
    k = torch.randn(4, 1, 32, device=DEVICE)
    pos = torch.arange(4, device=DEVICE)
    bad = [
        dict(k=torch.randn(3, 1, 32, device=DEVICE)),  # T differs
        dict(k=torch.randn(4, 1, 16, device=DEVICE)),  # D differs
        dict(q=q.transpose(1, 2).contiguous().transpose(1, 2)),  # last dim strided
        dict(positions=pos[:3]),
        dict(positions=pos.float()),
        dict(rotary_dim=15),
        dict(rotary_dim=64),
        dict(q=q[0]),
    ]
    for change in bad:
        args = dict(q=q, k=k, positions=pos, rotary_dim=16, theta=1e4) | change
        with pytest.raises(ValueError):
            apply_rope(args.pop("q"), args.pop("k"), args.pop("positions"), **args)
