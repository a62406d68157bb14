"""CUDA graphs for decode steps and for speculative verify steps: the model's forward captured once
per padded batch size, then replayed with the step's tensors copied into static buffers.

Every tensor such a forward reads lives in one `StaticInputs` (sized for the largest batch, `n`
new tokens per sequence: 1 for decode, the draft tokens for a verify of draft chains); a step of
B sequences runs the graph of the smallest captured size >= B. Padding rows point at the
reserved padding targets — state slot 0, KV page 0 (token slot 0), sequence length n, no
snapshot — and are rewritten on every replay, so a stale row of an earlier, larger batch never
touches a live slot. A verify graph writes its per-step recurrent states into the first rows of
the executor's `SpecStateBuffers` (padding rows into rows no sequence of the step owns). Inputs
are copied on the device (no host sync), so the overlap loop's future tokens, written into the
step's input ids on the device, reach the graph unchanged. Decode snapshots (extra_buffer)
always go through `snapshot_slots` (-1 = none) in graphs.

Graphs need a forward without host syncs: the Triton kernels of every layer on CUDA. Decisions:
batch sizes 1, 2, 4, 8, then every 8 up to `--cuda-graph-max-bs` (SGLang's ladder); the page
table's width is fixed at capture (context length / page size); draft trees verify eagerly
(their attention takes the reference's ancestor mask). Without CUDA (`eager=True`, tests) the
same static buffers run the eager forward, which checks the padding logic on CPU."""

from __future__ import annotations

import bisect
from collections.abc import Callable

import torch

from qnext.worker.forward import ForwardBatch, KVCache, SpecStates, StateCache

Forward = Callable[[ForwardBatch], tuple[torch.Tensor, torch.Tensor]]


def graph_batch_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, ... up to max_bs (always included)."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_bs]
    sizes += list(range(16, max_bs + 1, 8))
    return sorted(set(sizes) | {max_bs})


class StaticInputs:
    """The input tensors of a forward over up to `max_bs` sequences of `n` new tokens each and
    <= `max_pages` pages."""

    def __init__(self, max_bs: int, max_pages: int, device: torch.device, n: int = 1) -> None:
        def zeros(*shape):
            return torch.zeros(shape, dtype=torch.int64, device=device)

        self.n = n
        self.input_ids, self.positions, self.kv_locs = zeros(max_bs * n), zeros(max_bs * n), \
            zeros(max_bs * n)
        self.state_slots, self.page_table = zeros(max_bs), zeros(max_bs, max_pages)
        self.seq_lens = torch.full_like(self.state_slots, n)
        self.snapshot_slots = torch.full_like(self.state_slots, -1)
        self.offsets = torch.ones_like(self.state_slots)
        self.arange = torch.arange(max_bs * n + 1, device=device)
        self.cu_seqlens = self.arange[:max_bs + 1] * n
        self.has_initial = torch.ones(max_bs, dtype=torch.bool, device=device)

    def batch(self, bs: int, kv_cache: KVCache, state_cache: StateCache,
              spec_states: SpecStates | None = None) -> ForwardBatch:
        """The ForwardBatch of views over the first `bs` rows (what a graph captures); a
        verify batch (n > 1) also gets the first `bs` rows of `spec_states`."""
        tokens, decode = bs * self.n, self.n == 1
        return ForwardBatch(
            input_ids=self.input_ids[:tokens], positions=self.positions[:tokens],
            cu_seqlens=self.cu_seqlens[:bs + 1], seq_lens=self.seq_lens[:bs],
            state_slots=self.state_slots[:bs], has_initial_state=self.has_initial[:bs],
            page_table=self.page_table[:bs], kv_locs=self.kv_locs[:tokens],
            logits_indices=self.arange[:tokens], is_decode=decode, kv_cache=kv_cache,
            state_cache=state_cache,
            snapshot_slots=self.snapshot_slots[:bs] if decode else None,
            snapshot_offsets=self.offsets[:bs] if decode else None,
            spec_states=None if decode else spec_states.rows(bs))

    def load(self, batch: ForwardBatch, padded: int) -> None:
        """Copy a batch of B sequences in; rows B..padded-1 become padding."""
        bs, pages, n = batch.num_seqs, batch.page_table.shape[1], self.n
        tokens, end = bs * n, padded * n
        self.input_ids[:tokens].copy_(batch.input_ids)
        self.positions[:tokens].copy_(batch.positions)
        self.kv_locs[:tokens].copy_(batch.kv_locs)
        self.state_slots[:bs].copy_(batch.state_slots)
        self.seq_lens[:bs].copy_(batch.seq_lens)
        self.page_table[:bs, :pages].copy_(batch.page_table)
        if batch.snapshot_slots is None:
            self.snapshot_slots[:bs].fill_(-1)
        else:
            self.snapshot_slots[:bs].copy_(batch.snapshot_slots)
        for buf in (self.input_ids, self.positions, self.kv_locs):
            buf[tokens:end].zero_()
        self.state_slots[bs:padded].zero_()
        self.seq_lens[bs:padded].fill_(n)
        self.page_table[bs:padded].zero_()
        self.snapshot_slots[bs:padded].fill_(-1)


class StepGraphs:
    """Captured forwards over the runner's pools: decode (`n` = 1) or the verify of draft
    chains of `n` tokens (`spec_states`: the executor's verify buffers, >= max_bs rows).
    `run(batch)` -> (logits [B * n, V], hidden [B * n, H]) views that stay valid until the
    next `run`."""

    def __init__(self, forward: Forward, kv_cache: KVCache, state_cache: StateCache,
                 device: torch.device, max_bs: int, max_pages: int, eager: bool = False,
                 n: int = 1, spec_states: SpecStates | None = None) -> None:
        if (n > 1) != (spec_states is not None):
            raise ValueError("verify graphs (n > 1) need spec_states; decode graphs take none")
        self.n = n
        self.kv_cache, self.state_cache, self.spec_states = kv_cache, state_cache, spec_states
        self.sizes = graph_batch_sizes(max_bs)
        self.max_pages = max_pages
        self.static = StaticInputs(max_bs, max_pages, device, n)
        self.captured = SizeGraphs(self.sizes, lambda bs: forward(self.static_batch(bs)), eager)
        self.runs = 0  # steps served (a replay each, or an eager run of the static buffers)

    def can_run(self, batch: ForwardBatch) -> bool:
        if self.n == 1:
            shape_ok = batch.is_decode and not batch.is_verify
        else:
            shape_ok = (batch.is_verify and batch.spec_parents is None
                        and batch.num_tokens == batch.num_seqs * self.n)
        return (shape_ok and batch.num_seqs <= self.sizes[-1]
                and batch.page_table.shape[1] <= self.max_pages)

    def run(self, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        bs = batch.num_seqs
        padded = self.padded_size(bs)
        self.static.load(batch, padded)
        self.runs += 1
        logits, hidden = self.captured.replay(padded)
        return logits[:bs * self.n], hidden[:bs * self.n]

    def padded_size(self, bs: int) -> int:
        """The captured batch size a step of `bs` sequences runs at."""
        return self.sizes[bisect.bisect_left(self.sizes, bs)]

    def static_batch(self, bs: int) -> ForwardBatch:
        """The batch of views over the first `bs` static rows (what the graph of `bs` reads)."""
        return self.static.batch(bs, self.kv_cache, self.state_cache, self.spec_states)


class SizeGraphs:
    """`run(size)` captured once per size — or, with `eager`, simply run (CPU tests of the
    static buffers). `replay(size)` returns that size's output: the captured tensors, valid
    until the next replay."""

    def __init__(self, sizes: list[int], run: Callable[[int], object], eager: bool) -> None:
        self.run, self.eager = run, eager
        self.graphs, self.outputs = ({}, {}) if eager else _capture_sizes(sizes, run)

    def replay(self, size: int):
        if self.eager:
            self.outputs[size] = self.run(size)
        else:
            self.graphs[size].replay()
        return self.outputs[size]


@torch.inference_mode()
def _capture_sizes(sizes: list[int], run: Callable[[int], object]) -> tuple[dict, dict]:
    """One graph per size of `run(size)` (largest first, so smaller graphs reuse its memory
    pool), each after two eager warm-up runs (Triton compiles and autotunes outside capture).
    Returns ({size: graph}, {size: the captured run's output})."""
    graphs, outputs, pool = {}, {}, None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for size in sorted(sizes, reverse=True):
            for _ in range(2):
                run(size)
            # no collective of the warm-up may still be pending: NCCL's watchdog thread
            # polls those, and such polls invalidate a capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads' CUDA calls (the NCCL watchdog's event queries)
            # must not invalidate this thread's capture
            with torch.cuda.graph(graph, pool=pool, stream=stream,
                                  capture_error_mode="thread_local"):
                outputs[size] = run(size)
            pool = graph.pool()
            graphs[size] = graph
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    return graphs, outputs
