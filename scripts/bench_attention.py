"""Benchmark (not a test): the Triton paged-attention kernels (`kernels/attention.py`) at
Qwen3-Next shapes (D = 256, bf16; TP1 heads Hq:Hkv = 16:2, TP4 heads 4:1) on one GPU. Prints
markdown tables.

Decode (one new token per sequence, every sequence of the batch at the same context): qnext
reads K/V through a page table of shuffled pages (each sequence its own pages). Anchors in
the same run: the bandwidth floor (K/V bytes / HBM bandwidth of a 1 GiB torch device copy,
read + write) and torch `scaled_dot_product_attention` (`enable_gqa`) over K/V already
gathered into contiguous [B, L, Hkv, D] tensors — the gather is excluded from its time.
Prefill: 1 x 4K and 4 x 1K fresh causal prompts, and 1K new tokens over an 8K cached prefix;
the SDPA anchor is causal (fresh) or `causal_lower_right` over K/V gathered and repeated to
Hq heads (prefix), again excluded from its time; FLOPs count the causal work only
(4 * D * Hq * attended pairs) against the nominal 989 TFLOP/s dense bf16 of H100 / H200 SXM.
Times: `triton.testing.do_bench` medians (Python launch included). Each output is checked
against its anchor (relative difference) before timing.

    python scripts/bench_attention.py
    python scripts/bench_attention.py --prefill-sweep   # prefill tile settings, prefill rows
    python scripts/bench_attention.py --prefill-splits  # prefill key splits: default, forced

The prefill sweep exists because the default D = 256 tile (128 rows, 32 keys, 8 warps)
compiles to 255 registers with spills on sm_90, while 64 rows, 64 keys, 8 warps needs 210
and none (scripts/compile_sm90.py); which is faster is for the GPU to say.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.testing
from torch.nn.attention.bias import causal_lower_right

from qnext.kernels.attention import paged_attention
from qnext.kernels.attention_prefill import prefill_config, prefill_splits, tile_count
from bench_common import copy_gbps, rel_diff

D = 256
HEADS = {"TP1": (16, 2), "TP4": (4, 1)}
PEAK_TFLOPS = 989.0


def _time_us(fn) -> float:
    return triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median") * 1e3


def _timed_pair(ours, anchor, anchor_view) -> tuple[float, str, str, str]:
    """(qnext µs, anchor µs, anchor / qnext, relative difference); '—' where the anchor
    fails (an SDPA backend that rejects the shape)."""
    us = _time_us(ours)
    try:
        diff = rel_diff(ours(), anchor_view(anchor()))
        anchor_us = _time_us(anchor)
    except RuntimeError as err:
        print(f"<!-- anchor failed: {str(err).splitlines()[0]} -->")
        return us, "—", "—", "—"
    return us, f"{anchor_us:.1f}", f"{anchor_us / us:.2f}", f"{diff:.1e}"


def _paged_kv(num_seqs: int, length: int, hkv: int, page_size: int, gen: torch.Generator):
    """K/V pools with `num_seqs` sequences of `length` tokens on distinct shuffled pages
    (page 0 left as padding); the page table is int32 [B, pages]."""
    pages = triton.cdiv(length, page_size)
    order = torch.randperm(num_seqs * pages, device="cuda", generator=gen) + 1
    rows = (num_seqs * pages + 1) * page_size

    def pool():
        return torch.empty(rows, hkv, D, dtype=torch.bfloat16, device="cuda").normal_(
            generator=gen)

    return pool(), pool(), order.view(num_seqs, pages).to(torch.int32)


def _gather(cache: torch.Tensor, table: torch.Tensor, length: int, page_size: int):
    """[B, Hkv, L, D] view of the sequences' K or V rows copied contiguously as [B, L, Hkv, D]."""
    pos = torch.arange(length, device="cuda")
    locs = table[:, pos // page_size].long() * page_size + pos % page_size
    return cache[locs].transpose(1, 2)


def _decode_row(B: int, ctx: int, tp: str, page_size: int, gbps: float) -> str:
    hq, hkv = HEADS[tp]
    gen = torch.Generator(device="cuda").manual_seed(B + ctx + page_size)
    k_cache, v_cache, table = _paged_kv(B, ctx, hkv, page_size, gen)
    q = torch.randn(B, hq, D, device="cuda", generator=gen).to(torch.bfloat16)
    args = dict(cu_seqlens=torch.arange(B + 1, device="cuda"),
                seq_lens=torch.full((B,), ctx, device="cuda"), page_table=table,
                page_size=page_size, scale=D ** -0.5, is_decode=True, max_seqlen=ctx)
    ours = lambda: paged_attention(q, k_cache, v_cache, **args)  # noqa: E731
    k, v = _gather(k_cache, table, ctx, page_size), _gather(v_cache, table, ctx, page_size)
    anchor = lambda: F.scaled_dot_product_attention(  # noqa: E731
        q[:, :, None], k, v, scale=D ** -0.5, enable_gqa=True)
    us, anchor_us, ratio, diff = _timed_pair(ours, anchor, lambda o: o[:, :, 0])
    kv_bytes = 2 * B * ctx * hkv * D * 2
    floor = kv_bytes / (gbps * 1e9) * 1e6
    return (f"| {B} | {ctx // 1024}K | {tp} | {page_size} | {kv_bytes / 1e6:.0f} | {floor:.1f} | "
            f"{us:.1f} | {anchor_us} | {ratio} | {floor / us:.2f} | {diff} |")


def _prefill_row(num_seqs: int, new: int, prefix: int, tp: str, splits=(None,)) -> str:
    hq, hkv = HEADS[tp]
    length, page_size = prefix + new, 16
    gen = torch.Generator(device="cuda").manual_seed(num_seqs + new + prefix)
    k_cache, v_cache, table = _paged_kv(num_seqs, length, hkv, page_size, gen)
    q = torch.randn(num_seqs * new, hq, D, device="cuda", generator=gen).to(torch.bfloat16)
    args = dict(cu_seqlens=torch.arange(num_seqs + 1, device="cuda") * new,
                seq_lens=torch.full((num_seqs,), length, device="cuda"), page_table=table,
                page_size=page_size, scale=D ** -0.5, is_decode=False)
    ours = lambda n=splits[0]: paged_attention(q, k_cache, v_cache, num_splits=n,  # noqa: E731
                                               **args)
    qa = q.view(num_seqs, new, hq, D).transpose(1, 2)
    k, v = _gather(k_cache, table, length, page_size), _gather(v_cache, table, length, page_size)
    if prefix:
        k, v = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
        bias = causal_lower_right(new, length)
        anchor = lambda: F.scaled_dot_product_attention(qa, k, v, bias, scale=D ** -0.5)  # noqa
    else:
        anchor = lambda: F.scaled_dot_product_attention(  # noqa: E731
            qa, k, v, is_causal=True, scale=D ** -0.5, enable_gqa=True)
    us, anchor_us, ratio, diff = _timed_pair(
        ours, anchor, lambda o: o.transpose(1, 2).reshape(-1, hq, D))
    pairs = num_seqs * (new * prefix + new * (new + 1) // 2)
    tflop = 4 * D * hq * pairs / 1e12
    floor = tflop / PEAK_TFLOPS * 1e6
    shape = f"{num_seqs} x {new // 1024}K" + (f" over {prefix // 1024}K" if prefix else "")
    more = "".join(f" {_time_us(lambda n=n: ours(n)):.1f} |" for n in splits[1:])
    if len(splits) > 1:  # the split count the launcher picks
        cfg = prefill_config(D, hq // hkv, q.dtype)
        chosen = prefill_splits(q, tile_count(q.shape[0], num_seqs, cfg) * hkv,
                                table.shape[1] * page_size)
        more = f" {chosen} |" + more
    return (f"| {shape} | {tp} | {tflop:.2f} | {floor:.1f} | {us:.1f} | {anchor_us} | {ratio} | "
            f"{tflop / (us * 1e-6):.0f} | {diff} |{more}")


def prefill_splits_table() -> None:
    """The prefill rows with the launcher's key splits (default) and forced split counts."""
    forced = (1, 2, 4, 8)
    print("| prefill | heads | TFLOP | floor µs | qnext µs (default splits) | SDPA µs | "
          "SDPA / qnext | qnext TFLOP/s | rel. diff | default splits | "
          + " | ".join(f"{n} split{'s' * (n > 1)} µs" for n in forced) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(forced))
    for tp in HEADS:
        for num_seqs, new, prefix in ((1, 4096, 0), (4, 1024, 0), (1, 1024, 8192),
                                      (1, 2048, 32768)):
            print(_prefill_row(num_seqs, new, prefix, tp, (None,) + forced), flush=True)
            torch.cuda.empty_cache()


def main() -> None:
    gbps = copy_gbps()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}; HBM copy bandwidth {gbps:.0f} GB/s\n")
    print("| B | context | heads | page | K/V MB | floor µs | qnext µs | SDPA µs | SDPA / qnext "
          "| floor / qnext | rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tp in HEADS:
        for page_size in (16, 1):
            for B in (1, 32, 256):
                for ctx in (1024, 8192, 32768):
                    print(_decode_row(B, ctx, tp, page_size, gbps), flush=True)
                    torch.cuda.empty_cache()
    print("\n| prefill | heads | TFLOP | floor µs | qnext µs | SDPA µs | SDPA / qnext "
          "| qnext TFLOP/s | rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tp in HEADS:
        for num_seqs, new, prefix in ((1, 4096, 0), (4, 1024, 0), (1, 1024, 8192)):
            print(_prefill_row(num_seqs, new, prefix, tp), flush=True)
            torch.cuda.empty_cache()


# (rows = tokens x padded heads, keys per block, warps, stages); the first is the default
PREFILL_TILES = [(128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 8, 2), (64, 32, 4, 2),
                 (128, 64, 8, 2), (64, 64, 8, 3)]


def prefill_sweep() -> None:
    """The prefill rows under each of PREFILL_TILES (kernels/attention_prefill.py's
    `prefill_config` replaced for the run)."""
    from qnext.kernels import attention_prefill

    default = attention_prefill.prefill_config
    for rows, bn, warps, stages in PREFILL_TILES:
        def config(head_dim, group, dtype, rows=rows, bn=bn, warps=warps, stages=stages):
            return dict(BT=max(rows // attention_prefill.pow2(group), 1), BN=bn,
                        num_warps=warps, num_stages=stages)
        attention_prefill.prefill_config = config
        print(f"\nrows {rows}, keys {bn}, {warps} warps, {stages} stages")
        print("| prefill | heads | TFLOP | floor µs | qnext µs | SDPA µs | SDPA / qnext "
              "| qnext TFLOP/s | rel. diff |")
        print("|---|---|---|---|---|---|---|---|---|")
        for tp in HEADS:
            for num_seqs, new, prefix in ((1, 4096, 0), (1, 1024, 8192)):
                try:
                    print(_prefill_row(num_seqs, new, prefix, tp), flush=True)
                except Exception as exc:  # noqa: BLE001 - out of shared memory etc.: report
                    print(f"| {num_seqs} x {new} over {prefix} | {tp} | failed: "
                          f"{type(exc).__name__} |", flush=True)
                torch.cuda.empty_cache()
    attention_prefill.prefill_config = default


if __name__ == "__main__":
    import sys

    if "--prefill-sweep" in sys.argv:
        prefill_sweep()
    elif "--prefill-splits" in sys.argv:
        prefill_splits_table()
    else:
        main()
