"""Triton launcher: varlen prefill of the Gated DeltaNet (chunked gated delta rule) over the pool.

Chunks of 64 tokens ([s, s + 64) inside each sequence, the last one partial). Every
arrangement has a parallel stage over (chunk, value head) — the fused gates
(g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b)), the q / k L2 norm, the in-chunk
gate cumsum, X = (I + A)^-1 by 16 x 16 blocks and the WY / UT terms W, U — and a sequential
stage over each sequence's chunks (the state recurrence in float32 registers, the final state
in place in its slot, the optional snapshot). `pipeline` picks the kernels (timings:
docs/perf/gdn-prefill.md):
  - "lite" (the default; flash-linear-attention's arrangement, fastest at every measured
    size on the H200): X alone (kernels/gdn_chunk_kkt.py, k streamed in column slices, one
    warp), W and U as 64-row products (kernels/gdn_chunk_wu.py), then a walk that keeps only
    the state recurrence and stores the state entering each chunk, and the outputs of every
    chunk in parallel, P formed there (kernels/gdn_chunk_split.py);
  - "fused": one prep kernel for W, U and the intra-chunk attention P
    (kernels/gdn_chunk_prep.py), then one scan that computes each chunk's outputs inside the
    walk (kernels/gdn_chunk_scan.py);
  - "split": that prep kernel, then the walk and output kernels of "lite".
"lite" and "split" hold the state entering every chunk in a transient workspace: Hv * dk * dv
values in the dot dtype per 64 tokens (16 KB a token at Hv = 32, d = 128, bf16: 134 MB for an
8K-token prefill chunk), inside the activation headroom that `--mem-fraction-static` leaves.
The chunk map is found on the device (each program of kernel 1 locates its chunk from
cu_seqlens), so the launcher does not read cu_seqlens on the host; only the snapshot checks do.
Grouped heads: value head j reads key head j // (Hv // Hk); q, k are never repeated in memory.

Reference: `gdn_gating_ref` + `chunk_gated_delta_rule_ref` (kernels/gdn_ref.py). Arithmetic
in float32; the dots take 16-bit operands for 16-bit inputs (fast_dots) and float32 operands
as 3 x tf32 otherwise, with float32 accumulation.

Triton 3.6 on Hopper (H200, 2026-11-27) miscompiles the scan kernel's bf16 dots when a program
holds 32 or fewer value columns (wrong outputs or an illegal memory access, depending on the
warps); 64 columns are right (bisection in docs/perf/gdn-prefill.md). The launcher therefore
gives the fused scan 64 columns with 16-bit dots and refuses fewer. The split walk holds a
128-row state as two 64-row pieces and was right at 32 columns (docs/perf/gdn-prefill.md): with
"split" / "lite" it takes 32 columns when 64-column programs would leave SMs idle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from qnext.kernels.gdn_chunk_prep import CHUNK, chunk_prep_kernel
from qnext.kernels.gdn_chunk_scan import chunk_scan_kernel
from qnext.kernels.gdn_chunk_split import chunk_output_kernel, chunk_state_kernel
from qnext.kernels.gdn_chunk_kkt import chunk_kkt_kernel
from qnext.kernels.gdn_chunk_wu import chunk_wu_kernel
from qnext.kernels.launch import check_device, interpreting, num_sms
from qnext.kernels.varlen import snapshot_pointers, snapshot_targets

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PIPELINES = ("fused", "split", "lite")


def gdn_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
                b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, *,
                cu_seqlens: torch.Tensor, ssm_states: torch.Tensor, state_indices: torch.Tensor,
                has_initial_state: torch.Tensor, snapshot_slots: torch.Tensor | None = None,
                snapshot_offsets: torch.Tensor | None = None, scale: float | None = None,
                use_qk_l2norm: bool = True, eps: float = 1e-6, fast_dots: bool | None = None,
                block_v: int | None = None, num_warps: tuple[int, int] | None = None,
                check_snapshots: bool = True, pipeline: str = "lite") -> torch.Tensor:
    """Prefill of B sequences packed in T tokens.

    q, k [T, Hk, dk] (rows may be strided, last dim contiguous); v [T, Hv, dv]; q, k, v of one
    dtype (float32, bfloat16 or float16); a, b [T, Hv] raw gate inputs; A_log, dt_bias [Hv]
    float32. cu_seqlens [B+1] int32/int64 from 0 to T (empty sequences are skipped, their slot
    untouched); state_indices [B] distinct slots of ssm_states [S, Hv, dk, dv] (float32 or
    bfloat16, updated in place); has_initial_state bool [B] (False: start from zeros).
    snapshot_slots [B] (-1: none) and snapshot_offsets [B]: the state after the first t tokens
    of sequence b (t a multiple of 64, or its length) also goes to ssm_states[snapshot_slots[b]]
    (slots distinct from each other and from state_indices; checked on the host unless
    check_snapshots is False, for callers that checked them already). scale defaults to
    dk ** -0.5.
    fast_dots: dots in the 16-bit input dtype (default: whenever q is 16-bit); False: every
    dot in float32 (3 x tf32). block_v (value columns per program of the sequential kernel;
    default: `_default_block_v`) and num_warps (of the first and the sequential
    kernels; default (1, 4) for "lite", whose X kernel runs fastest at one warp, else (4, 4)) are
    tuning knobs; pipeline: "lite" (the default), "fused" or "split" (see the module docstring).
    Returns o [T, Hv, dv] in v.dtype.
    """
    T, HK, DK = q.shape
    B = state_indices.shape[0]
    fast_dots = q.dtype != torch.float32 if fast_dots is None else fast_dots
    block_v = block_v or _default_block_v(q, v, B, fast_dots, pipeline)
    if fast_dots and q.dtype != torch.float32 and block_v < 64 and pipeline == "fused":
        raise ValueError(f"16-bit dots need block_v >= 64, got {block_v} (a Triton miscompile "
                         "on Hopper, see the module docstring)")
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
    _check(q, k, v, a, b, A_log, dt_bias, cu_seqlens, ssm_states, state_indices,
           has_initial_state, snapshot_slots, snapshot_offsets, block_v)
    if snapshot_slots is not None and check_snapshots:  # reads them on the host
        snapshot_targets(cu_seqlens, snapshot_slots, snapshot_offsets, align=CHUNK)
    num_warps = num_warps or ((1, 4) if pipeline == "lite" else (4, 4))
    out = torch.empty_like(v, memory_format=torch.contiguous_format)
    if T == 0 or B == 0:
        return out
    first = lite_chunks if pipeline == "lite" else prep_chunks
    work = first(q, k, v, a, b, A_log, dt_bias, cu_seqlens, B,
                 DK**-0.5 if scale is None else scale, use_qk_l2norm, eps,
                 q.dtype if fast_dots else torch.float32, num_warps[0])
    stage = scan_chunks if pipeline == "fused" else split_chunks
    stage(work, q, k, out, ssm_states, cu_seqlens, state_indices, has_initial_state,
          snapshot_slots, snapshot_offsets, block_v, num_warps[1])
    return out


@dataclass
class ChunkWork:
    """What the parallel stage leaves for the sequential one (kernels/gdn_chunk_prep.py):
    w [Hv, T, dk], u [Hv, T, dv], p [Hv, T, 64] in the dot dtype (the kernels' dots take
    operands in the dtype of w; p None: the output kernel forms P); g [Hv, T], rq, rk [Hk, T]
    float32."""

    w: torch.Tensor
    u: torch.Tensor
    p: torch.Tensor | None
    g: torch.Tensor
    rq: torch.Tensor
    rk: torch.Tensor


def prep_chunks(q, k, v, a, b, A_log, dt_bias, cu_seqlens, num_seqs: int, scale: float,
                use_qk_l2norm: bool, eps: float, dot_dtype: torch.dtype,
                num_warps: int = 4) -> ChunkWork:
    """Stage 1 (inputs as gdn_prefill's, already checked): gates, norms, W, U, P per chunk;
    dot_dtype: q.dtype or float32."""
    work = _workspace(q, v, dot_dtype, with_p=True)
    (T, HK, DK), (HV, DV) = q.shape, v.shape[1:]
    chunk_prep_kernel[(T // CHUNK + num_seqs, HV)](  # >= the number of chunks
        q, k, v, a, b, A_log, dt_bias, cu_seqlens, work.w, work.u, work.p, work.g, work.rq,
        work.rk, num_seqs, T, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), a.stride(0), b.stride(0), scale, eps,
        HV=HV, HK=HK, DK=DK, DV=DV, BK=_pow2(DK), BV=_pow2(DV), L2NORM=use_qk_l2norm,
        PREC=_precision(dot_dtype), num_warps=num_warps)
    return work


def lite_chunks(q, k, v, a, b, A_log, dt_bias, cu_seqlens, num_seqs: int, scale: float,
                use_qk_l2norm: bool, eps: float, dot_dtype: torch.dtype,
                num_warps: int = 4) -> ChunkWork:
    """Stage 1 of the "lite" pipeline: X (kernels/gdn_chunk_kkt.py), then W and U
    (kernels/gdn_chunk_wu.py); no P."""
    work = _workspace(q, v, dot_dtype, with_p=False)
    (T, HK, DK), (HV, DV) = q.shape, v.shape[1:]
    x = torch.empty(HV, T, CHUNK, device=q.device, dtype=dot_dtype)
    grid, prec = (T // CHUNK + num_seqs, HV), _precision(dot_dtype)
    chunk_kkt_kernel[grid](
        q, k, a, b, A_log, dt_bias, cu_seqlens, x, work.g, work.rq, work.rk, num_seqs, T,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), a.stride(0), b.stride(0), scale,
        eps, HV=HV, HK=HK, DK=DK, BKS=min(64, _pow2(DK)), L2NORM=use_qk_l2norm, PREC=prec,
        num_warps=num_warps)
    chunk_wu_kernel[grid](
        k, v, b, x, work.g, work.rk, cu_seqlens, work.w, work.u, num_seqs, T, k.stride(0),
        k.stride(1), v.stride(0), v.stride(1), b.stride(0), HV=HV, HK=HK, DK=DK, DV=DV,
        BK=_pow2(DK), BV=_pow2(DV), PREC=prec, num_warps=4)
    return work


def _workspace(q, v, dt: torch.dtype, with_p: bool) -> ChunkWork:
    (T, HK, DK), (HV, DV) = q.shape, v.shape[1:]
    empty = lambda *shape, dtype=dt: torch.empty(*shape, device=q.device, dtype=dtype)  # noqa: E731
    return ChunkWork(empty(HV, T, DK), empty(HV, T, DV),
                     empty(HV, T, CHUNK) if with_p else None, empty(HV, T, dtype=torch.float32),
                     empty(HK, T, dtype=torch.float32), empty(HK, T, dtype=torch.float32))


def scan_chunks(work: ChunkWork, q, k, out, ssm_states, cu_seqlens, state_indices,
                has_initial_state, snapshot_slots=None, snapshot_offsets=None,
                block_v: int = 32, num_warps: int = 4) -> None:
    """Stage 2: the state recurrence over each sequence's chunks; writes out [T, Hv, dv], the
    final states and the snapshots."""
    (T, HK, DK), (HV, DV) = q.shape, out.shape[1:]
    snaps, snap_at = snapshot_pointers(snapshot_slots, snapshot_offsets, state_indices)
    chunk_scan_kernel[(triton.cdiv(DV, block_v), HV, state_indices.shape[0])](
        q, k, work.w, work.u, work.p, work.g, work.rq, work.rk, out, ssm_states, cu_seqlens,
        state_indices, has_initial_state, snaps, snap_at,
        T, q.stride(0), q.stride(1), k.stride(0), k.stride(1), out.stride(0), out.stride(1),
        ssm_states.stride(0), ssm_states.stride(1), ssm_states.stride(2),
        HV=HV, HK=HK, DK=DK, DV=DV, BK=_pow2(DK), BV=block_v, PREC=_precision(work.w.dtype),
        HAS_SNAP=snapshot_slots is not None, WHILE_LOOP=interpreting(), num_warps=num_warps,
        num_stages=2)  # fp32: 3 stages overflow shared memory; 16-bit: verified with 2


def split_chunks(work: ChunkWork, q, k, out, ssm_states, cu_seqlens, state_indices,
                 has_initial_state, snapshot_slots=None, snapshot_offsets=None,
                 block_v: int = 32, num_warps: int = 4) -> None:
    """Stage 2 as a state-only walk (V' written over work.u) and a parallel output kernel."""
    (T, HK, DK), (HV, DV) = q.shape, out.shape[1:]
    B = state_indices.shape[0]
    chunks = T // CHUNK + B  # >= the number of chunks
    h = torch.empty(chunks, HV, DK, DV, device=q.device, dtype=work.w.dtype)
    snaps, snap_at = snapshot_pointers(snapshot_slots, snapshot_offsets, state_indices)
    wide = work.w.dtype != torch.float32  # 16-bit dots: 3 stages and 128 output columns fit
    meta = dict(HV=HV, HK=HK, DK=DK, DV=DV, BK=_pow2(DK), PREC=_precision(work.w.dtype),
                num_warps=num_warps)
    chunk_state_kernel[(triton.cdiv(DV, block_v), HV, B)](
        k, work.w, work.u, work.g, work.rk, h, ssm_states, cu_seqlens, state_indices,
        has_initial_state, snaps, snap_at, T, B, k.stride(0), k.stride(1),
        ssm_states.stride(0), ssm_states.stride(1), ssm_states.stride(2), BV=block_v,
        HAS_SNAP=snapshot_slots is not None, WHILE_LOOP=interpreting(),
        num_stages=3 if wide else 2, **meta)
    out_bv = max(block_v, min(128, _pow2(DV))) if wide else block_v
    chunk_output_kernel[(chunks, HV, triton.cdiv(DV, out_bv))](
        q, k, work.u, work.u if work.p is None else work.p, work.g, work.rq, work.rk, h, out,
        cu_seqlens, T, B, q.stride(0), q.stride(1), k.stride(0), k.stride(1), out.stride(0),
        out.stride(1), BV=out_bv, P_INLINE=work.p is None, **meta)


def _default_block_v(q, v, num_seqs: int, fast_dots: bool, pipeline: str) -> int:
    """32 value columns per sequential program with float32 dots; 64 with 16-bit dots, or
    32 for the split walk when 64 would give fewer programs than the GPU has SMs (one long
    sequence: 32 heads x 2 blocks leave half of an H200 idle)."""
    if not fast_dots:
        return 32
    if pipeline == "fused" or q.device.type != "cuda":
        return 64
    programs = num_seqs * v.shape[1] * triton.cdiv(v.shape[2], 64)
    return 32 if programs < num_sms(q.device.index) else 64


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _precision(dt: torch.dtype) -> str:
    """fp32 dots as 3 x tf32 (about fp32 accuracy); ignored for 16-bit operands."""
    return "tf32x3" if dt == torch.float32 else "tf32"


def _check(q, k, v, a, b, A_log, dt_bias, cu, states, indices, has_init, snaps, snap_at,
           block_v) -> None:
    T, HK, DK = q.shape
    HV, DV = v.shape[1], v.shape[2]
    B = indices.shape[0]
    if k.shape != q.shape or v.dim() != 3 or v.shape[0] != T:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} must be [T, Hk, dk] and v "
                         f"{tuple(v.shape)} [T, Hv, dv]")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one of {_DTYPES}; got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    if HV % HK or a.shape != (T, HV) or b.shape != (T, HV):
        raise ValueError(f"Hv={HV} must be a multiple of Hk={HK}; a, b must be [T, Hv]")
    if min(DK, DV) < 16 or block_v < 16 or block_v & (block_v - 1):
        raise ValueError(f"dk={DK} and dv={DV} must be >= 16; block_v={block_v} a power of 2 "
                         ">= 16")
    if A_log.shape != (HV,) or dt_bias.shape != (HV,) or A_log.dtype != torch.float32 \
            or dt_bias.dtype != torch.float32:
        raise ValueError("A_log and dt_bias must be float32 [Hv]")
    if states.shape[1:] != (HV, DK, DV) or states.stride(3) != 1 \
            or states.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"ssm_states {tuple(states.shape)} {states.dtype} must be float32 or "
                         f"bfloat16 [S, {HV}, {DK}, {DV}] with contiguous columns")
    for name, t in (("q", q), ("k", k), ("v", v), ("a", a), ("b", b)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
    if cu.shape != (B + 1,) or cu.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens {tuple(cu.shape)} {cu.dtype} must be int32/int64 [B+1] "
                         f"with B={B} state_indices")
    if has_init.shape != (B,) or has_init.dtype != torch.bool:
        raise ValueError("has_initial_state must be bool [B]")
    if snaps is not None and (snaps.shape != (B,) or snap_at is None
                              or snap_at.shape != (B,)):
        raise ValueError("snapshot_slots and snapshot_offsets must both be [B]")
    check_device("gdn_prefill", q, k, v, a, b, A_log, dt_bias, cu, states, indices, has_init)
