"""The Triton chunked prefill of the gated delta rule against its torch reference: fresh random
inputs, output memory poisoned with NaN and untouched slots compared before / after, sequence
lengths around the chunk size (1, 63, 64, 65, 200) and empty ones, grouped heads (32:16, TP4's
8:4, 6:3 odd), dk = dv = 128 and smaller, fp32 and bf16 operands and states, mixed initial
states, snapshots at a multiple of 64 and at the sequence end, q / k / a / b as strided views.
Under Triton's CPU interpreter the bf16 operand cases run in fp16 (its bf16 dots are wrong)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from tests.gpu.kernel_env import DEVICE, KERNEL_MARKS, ON_GPU, generator  # noqa: E402

pytestmark = KERNEL_MARKS

from qnext.kernels import chunk_gated_delta_rule_ref, gdn_gating_ref  # noqa: E402
from tests.unit.kernels.helpers import cu, rel_err  # noqa: E402

# (sequence lengths, Hk, Hv, dk, dv); the interpreter (CPU) gets small heads, the GPU dk = dv
# in {64, 128} (fewer kernel variants to compile) and a long case
SHAPES = [([1, 63, 64, 65], 3, 6, 32, 32), ([200, 0, 17], 2, 4, 64, 64),
          ([130, 64], 1, 2, 128, 128)]
if ON_GPU:
    SHAPES = [([1, 63, 64, 65], 3, 6, 64, 64), ([200, 0, 17], 4, 8, 64, 64),
              ([130, 64], 1, 2, 128, 128), ([1, 63, 64, 65, 200, 0], 16, 32, 128, 128),
              ([300, 0, 64, 129], 4, 8, 128, 128), ([4096, 1000], 16, 32, 128, 128)]
DTYPES = [(torch.float32, torch.float32, 1e-3), (torch.bfloat16, torch.float32, 1e-2),
          (torch.bfloat16, torch.bfloat16, 1e-2)]


def _inputs(lengths, hk, hv, dk, dv, dtype, state_dtype, seed):
    """Random operands (q, k, a, b as strided views of wider rows), a state pool with
    2B + 2 slots, the sequences' slots and spare slots for snapshots."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    T, B = sum(lengths), len(lengths)

    def r(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, device=DEVICE, dtype=torch.float32).to(dt)

    qk = r(T, 2 * hk * dk + 8)
    ab = r(T, 2 * hv + 3)
    x = dict(q=qk[:, :hk * dk].view(T, hk, dk), k=qk[:, hk * dk:2 * hk * dk].view(T, hk, dk),
             v=r(T, hv, dv), a=ab[:, :hv], b=ab[:, hv:2 * hv],
             A_log=torch.log(torch.rand(hv, generator=gen, device=DEVICE) * 0.9 + 0.1),
             dt_bias=r(hv, dt=torch.float32))
    states = r(2 * B + 2, hv, dk, dv, dt=state_dtype) * 0.5
    index = torch.randperm(2 * B + 1, generator=gen, device=DEVICE) + 1
    return x, states, index[:B], index[B:2 * B]


def _snapshots(lengths, spare):
    """Every other non-empty sequence takes a snapshot: at 64 * k (< L) when L > 64, else at L."""
    slots, offsets = [], []
    for b, n in enumerate(lengths):
        take = n > 0 and b % 2 == 0
        slots.append(int(spare[b]) if take else -1)
        offsets.append(64 * max(1, (n - 1) // 128) if n > 64 else n)
    as_t = lambda x: torch.tensor(x, device=DEVICE)  # noqa: E731
    return as_t(slots), as_t(offsets)


def _poison_allocator(numel: int) -> None:
    """Leave NaN in memory the next allocations may reuse (outputs must be fully written)."""
    torch.full((numel,), float("nan"), device=DEVICE)


@pytest.mark.parametrize("block_v,warps", [(64, 4), (128, 8)])
def test_fast_16_bit_dots_by_stage(block_v, warps):
    """The fast_dots path, stage by stage (runs first): the prep workspaces with bf16 dots
    (fp16 under the interpreter) vs the same stage with fp32 dots on the same values, and the
    bf16 scan fed with the fp32-made workspaces vs the reference, at scan layouts of 64 and 128
    value columns (Triton 3.6 miscompiles 32 on Hopper: the launcher refuses it)."""
    from qnext.kernels.gdn_prefill import prep_chunks, scan_chunks

    lengths, dtype = [130, 64], torch.bfloat16 if ON_GPU else torch.float16
    x, states, slots, _ = _inputs(lengths, 2, 4, 128, 128, dtype, torch.float32, 7)
    cu_seqlens = cu(lengths).to(DEVICE)
    x32 = {n: t.float() for n, t in x.items()}
    stage = (cu_seqlens, len(lengths), 128**-0.5, True, 1e-6)
    low = prep_chunks(*x.values(), *stage, dtype)
    ref = prep_chunks(*x32.values(), *stage, torch.float32)
    names = ("w", "u", "p", "g", "rq", "rk")
    errors = {n: rel_err(getattr(low, n), getattr(ref, n)) for n in names}
    for name in ("w", "u", "p"):
        setattr(ref, name, getattr(ref, name).to(dtype))
    has_init = torch.ones(2, dtype=torch.bool, device=DEVICE)
    ref_states = states.clone()
    g, beta = gdn_gating_ref(x["A_log"], x["a"], x["b"], x["dt_bias"])
    want = chunk_gated_delta_rule_ref(x["q"], x["k"], x["v"], g, beta, cu_seqlens=cu_seqlens,
                                      ssm_states=ref_states, state_indices=slots,
                                      has_initial_state=has_init)
    got = torch.empty_like(x["v"])
    scan_chunks(ref, x["q"], x["k"], got, states, cu_seqlens, slots, has_init,
                block_v=block_v, num_warps=warps)
    errors["scan"] = rel_err(got, want)
    print("relative errors by stage:", errors)
    assert max(errors.values()) <= 1e-2, errors


@pytest.mark.parametrize("lengths,hk,hv,dk,dv", SHAPES)
@pytest.mark.parametrize("dtype,state_dtype,tol", DTYPES)
@pytest.mark.parametrize("snapshot,fast_dots", [(False, None), (True, None), (True, False)])
def test_prefill_kernel_matches_reference(lengths, hk, hv, dk, dv, dtype, state_dtype, tol,
                                          snapshot, fast_dots):
    """fast_dots None: 16-bit dots for 16-bit inputs; False: float32 dots for every input."""
    if fast_dots is False and dtype == torch.float32:
        pytest.skip("float32 inputs take float32 dots either way")
    _check_against_reference(lengths, hk, hv, dk, dv, dtype, state_dtype, tol, snapshot,
                             fast_dots=fast_dots)


@pytest.mark.parametrize("dtype,state_dtype,tol", DTYPES)
@pytest.mark.parametrize("pipeline", ["fused", "split", "lite"])
def test_many_sequences_and_every_pipeline(dtype, state_dtype, tol, pipeline):
    """21 sequences, empty ones among them: the kernels find their chunks by walking
    cu_seqlens 16 sequences at a time (kernels/chunk_map.py), so past 16 the second block
    counts; each of the launcher's pipelines."""
    lengths = [0, 5] + [(37 * i) % 131 for i in range(1, 19)] + [0]
    _check_against_reference(lengths, 2, 4, 32, 32, dtype, state_dtype, tol, True,
                             pipeline=pipeline)


def _check_against_reference(lengths, hk, hv, dk, dv, dtype, state_dtype, tol, snapshot,
                             **knobs):
    """gdn_prefill(**knobs) against the torch reference: outputs, the written slots, and
    every other slot untouched."""
    from qnext.kernels.gdn_prefill import gdn_prefill

    if dtype == torch.bfloat16 and not ON_GPU:  # the interpreter's bf16 dots are wrong:
        dtype = torch.float16  # it checks the same low-precision path in fp16
    B = len(lengths)
    x, states, slots, spare = _inputs(lengths, hk, hv, dk, dv, dtype, state_dtype, sum(lengths))
    cu_seqlens = cu(lengths).to(DEVICE)
    has_init = torch.arange(B, device=DEVICE) % 3 != 1
    snaps, offsets = _snapshots(lengths, spare) if snapshot else (None, None)
    ref_states = states.clone()
    g, beta = gdn_gating_ref(x["A_log"], x["a"], x["b"], x["dt_bias"])
    want = chunk_gated_delta_rule_ref(
        x["q"], x["k"], x["v"], g, beta, cu_seqlens=cu_seqlens, ssm_states=ref_states,
        state_indices=slots, has_initial_state=has_init, snapshot_slots=snaps,
        snapshot_offsets=offsets)
    states_before = states.clone()
    _poison_allocator(4 * x["v"].numel())
    got = gdn_prefill(**x, cu_seqlens=cu_seqlens, ssm_states=states, state_indices=slots,
                      has_initial_state=has_init, snapshot_slots=snaps,
                      snapshot_offsets=offsets, **knobs)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert not torch.isnan(got).any()
    assert rel_err(got, want) <= tol
    written = torch.zeros(states.shape[0], dtype=torch.bool, device=DEVICE)
    nonempty = torch.tensor(lengths, device=DEVICE) > 0
    written[slots[nonempty]] = True
    if snapshot:
        written[snaps[snaps >= 0]] = True
    for slot in written.nonzero().flatten().tolist():
        assert rel_err(states[slot], ref_states[slot]) <= tol, slot
    assert torch.equal(states[~written], states_before[~written])


@pytest.mark.parametrize("lengths,hk,hv,dk,dv", SHAPES)
@pytest.mark.parametrize("dtype,state_dtype,tol", DTYPES)
@pytest.mark.parametrize("pipeline", ["split", "lite"])
def test_other_pipelines_match_the_fused_one(lengths, hk, hv, dk, dv, dtype, state_dtype, tol,
                                             pipeline):
    """"split" (state walk + parallel outputs) and "lite" (X, then W / U, then the split
    stage forming P itself): the fused pipeline's outputs, final states and snapshots; the
    same dots on the same roundings up to accumulation order (and, for "lite", the L2 norm
    applied to the products of raw k instead of to k)."""
    from qnext.kernels.gdn_prefill import gdn_prefill

    if dtype == torch.bfloat16 and not ON_GPU:
        dtype = torch.float16
    x, states, slots, spare = _inputs(lengths, hk, hv, dk, dv, dtype, state_dtype, 7)
    kw = dict(cu_seqlens=cu(lengths).to(DEVICE), state_indices=slots,
              has_initial_state=torch.arange(len(lengths), device=DEVICE) % 3 != 1)
    snaps, offsets = _snapshots(lengths, spare)
    fused_states = states.clone()
    want = gdn_prefill(**x, **kw, ssm_states=fused_states, snapshot_slots=snaps,
                       snapshot_offsets=offsets, pipeline="fused")
    _poison_allocator(4 * x["v"].numel())
    got = gdn_prefill(**x, **kw, ssm_states=states, snapshot_slots=snaps,
                      snapshot_offsets=offsets, pipeline=pipeline)
    bound = tol / 10 if pipeline == "split" else tol / 3
    assert not torch.isnan(got).any() and rel_err(got, want) <= bound, rel_err(got, want)
    assert rel_err(states, fused_states) <= bound, rel_err(states, fused_states)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("pipeline", ["fused", "lite"])
def test_correlated_keys_match_reference(dtype, tol, pipeline):
    """Keys sharing one direction (k . k near 1) and slow gates: I + A far from I, so the chunk
    inverse needs every term of its series (random keys leave A near 0). float32 is held to
    1e-5: forward substitution and the series with its Newton step give 2e-6 on the CPU
    interpreter, the series alone 5e-5."""
    from qnext.kernels.gdn_prefill import gdn_prefill

    if dtype == torch.bfloat16 and not ON_GPU:
        dtype = torch.float16
    lengths, hk, hv, d = [130, 64], 1, 2, 32 if not ON_GPU else 128
    x, states, slots, _ = _inputs(lengths, hk, hv, d, d, dtype, torch.float32, 7)
    gen = generator(7)
    shared = torch.randn(1, hk, d, generator=gen, device=DEVICE)
    noise = torch.randn(sum(lengths), hk, d, generator=gen, device=DEVICE)
    x["k"] = (shared + 0.2 * noise).to(dtype)
    x["b"] = x["b"].float().abs().add(3.0).to(dtype)  # beta near 1
    x["a"] = torch.full_like(x["a"], -6.0)  # gates near 1: little decay inside a chunk
    cu_seqlens, has_init = cu(lengths).to(DEVICE), torch.tensor([True, False], device=DEVICE)
    ref_states = states.clone()
    g, beta = gdn_gating_ref(x["A_log"], x["a"], x["b"], x["dt_bias"])
    want = chunk_gated_delta_rule_ref(x["q"], x["k"], x["v"], g, beta, cu_seqlens=cu_seqlens,
                                      ssm_states=ref_states, state_indices=slots,
                                      has_initial_state=has_init)
    got = gdn_prefill(**x, cu_seqlens=cu_seqlens, ssm_states=states, state_indices=slots,
                      has_initial_state=has_init, pipeline=pipeline)
    assert rel_err(got, want) <= tol, rel_err(got, want)
    assert rel_err(states[slots], ref_states[slots]) <= tol


def test_launcher_rejects_bad_shapes():
    from qnext.kernels.gdn_prefill import gdn_prefill

    x, states, slots, _ = _inputs([5, 3], 2, 4, 32, 32, torch.float32, torch.float32, 0)
    kw = dict(cu_seqlens=cu([5, 3]).to(DEVICE), ssm_states=states, state_indices=slots,
              has_initial_state=torch.ones(2, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="multiple"):
        gdn_prefill(**{**x, "v": x["v"][:, :3], "a": x["a"][:, :3], "b": x["b"][:, :3],
                       "A_log": x["A_log"][:3], "dt_bias": x["dt_bias"][:3]},
                    **{**kw, "ssm_states": states[:, :3]})
    with pytest.raises(ValueError, match="ssm_states"):
        gdn_prefill(**x, **{**kw, "ssm_states": states.transpose(2, 3)})
    with pytest.raises(ValueError, match="cu_seqlens"):
        gdn_prefill(**x, **{**kw, "cu_seqlens": kw["cu_seqlens"][:2]})
    with pytest.raises(ValueError, match="share"):
        gdn_prefill(**{**x, "v": x["v"].bfloat16()}, **kw)
    with pytest.raises(ValueError, match="contiguous"):
        gdn_prefill(**{**x, "q": x["q"].transpose(1, 2).contiguous().transpose(1, 2)}, **kw)
    with pytest.raises(ValueError, match="snapshot"):
        gdn_prefill(**x, **kw, snapshot_slots=slots[:1], snapshot_offsets=slots[:1])
    with pytest.raises(ValueError, match="multiple of 64"):
        gdn_prefill(**x, **kw, snapshot_slots=slots, snapshot_offsets=torch.tensor([2, 3]))
    low = {n: t.half() if n in "qkv" else t for n, t in x.items()}
    with pytest.raises(ValueError, match="block_v >= 64"):  # Triton 3.6 miscompiles it
        gdn_prefill(**low, **kw, block_v=32, pipeline="fused")
    with pytest.raises(ValueError, match="pipeline"):
        gdn_prefill(**x, **kw, pipeline="chunked")
