"""CUDA graphs for decode steps: the model's forward captured once per padded batch size, then
replayed with the step's tensors copied into static buffers.

Every tensor a decode forward reads lives in one `StaticInputs` (sized for the largest batch);
a step of B sequences runs the graph of the smallest captured size >= B. Padding rows point at
the reserved padding targets — state slot 0, KV page 0 (token slot 0), sequence length 1, no
snapshot — and are rewritten on every replay, so a stale row of an earlier, larger batch never
touches a live slot. Inputs are copied on the device (no host sync), so the overlap loop's
future tokens, written into the step's input ids on the device, reach the graph unchanged.
Decode snapshots (extra_buffer) always go through `snapshot_slots` (-1 = none) in graphs.

Graphs need a forward without host syncs: the Triton kernels of every layer on CUDA. Decisions:
batch sizes 1, 2, 4, 8, then every 8 up to `--cuda-graph-max-bs` (SGLang's ladder); the page
table's width is fixed at capture (context length / page size). Without CUDA (`eager=True`,
tests) the same static buffers run the eager forward, which checks the padding logic on CPU.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import torch

from qnext.worker.forward import ForwardBatch, KVCache, StateCache

Forward = Callable[[ForwardBatch], tuple[torch.Tensor, torch.Tensor]]


def graph_batch_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, ... up to max_bs (always included)."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_bs]
    sizes += list(range(16, max_bs + 1, 8))
    return sorted(set(sizes) | {max_bs})


class StaticInputs:
    """The decode forward's input tensors for up to `max_bs` sequences of <= `max_pages` pages."""

    def __init__(self, max_bs: int, max_pages: int, device: torch.device) -> None:
        def zeros(*shape):
            return torch.zeros(shape, dtype=torch.int64, device=device)

        self.input_ids, self.positions, self.state_slots = zeros(max_bs), zeros(max_bs), \
            zeros(max_bs)
        self.seq_lens, self.kv_locs = torch.ones_like(self.input_ids), zeros(max_bs)
        self.page_table = zeros(max_bs, max_pages)
        self.snapshot_slots = torch.full_like(self.input_ids, -1)
        self.offsets = torch.ones_like(self.input_ids)
        self.arange = torch.arange(max_bs + 1, device=device)
        self.has_initial = torch.ones(max_bs, dtype=torch.bool, device=device)

    def batch(self, bs: int, kv_cache: KVCache, state_cache: StateCache) -> ForwardBatch:
        """The ForwardBatch of views over the first `bs` rows (what a graph captures)."""
        return ForwardBatch(
            input_ids=self.input_ids[:bs], positions=self.positions[:bs],
            cu_seqlens=self.arange[:bs + 1], seq_lens=self.seq_lens[:bs],
            state_slots=self.state_slots[:bs], has_initial_state=self.has_initial[:bs],
            page_table=self.page_table[:bs], kv_locs=self.kv_locs[:bs],
            logits_indices=self.arange[:bs], is_decode=True, kv_cache=kv_cache,
            state_cache=state_cache, snapshot_slots=self.snapshot_slots[:bs],
            snapshot_offsets=self.offsets[:bs])

    def load(self, batch: ForwardBatch, padded: int) -> None:
        """Copy a decode batch of B rows in; rows B..padded-1 become padding."""
        bs, pages = batch.num_seqs, batch.page_table.shape[1]
        self.input_ids[:bs].copy_(batch.input_ids)
        self.positions[:bs].copy_(batch.positions)
        self.state_slots[:bs].copy_(batch.state_slots)
        self.seq_lens[:bs].copy_(batch.seq_lens)
        self.kv_locs[:bs].copy_(batch.kv_locs)
        self.page_table[:bs, :pages].copy_(batch.page_table)
        if batch.snapshot_slots is None:
            self.snapshot_slots[:bs].fill_(-1)
        else:
            self.snapshot_slots[:bs].copy_(batch.snapshot_slots)
        for buf in (self.input_ids, self.positions, self.state_slots, self.kv_locs):
            buf[bs:padded].zero_()
        self.seq_lens[bs:padded].fill_(1)
        self.page_table[bs:padded].zero_()
        self.snapshot_slots[bs:padded].fill_(-1)


class DecodeGraphs:
    """Captured decode forwards over the runner's pools. `run(batch)` -> (logits [B, V],
    hidden [B, H]) views that stay valid until the next `run`."""

    def __init__(self, forward: Forward, kv_cache: KVCache, state_cache: StateCache,
                 device: torch.device, max_bs: int, max_pages: int, eager: bool = False) -> None:
        self.forward, self.eager = forward, eager
        self.kv_cache, self.state_cache = kv_cache, state_cache
        self.sizes = graph_batch_sizes(max_bs)
        self.max_pages = max_pages
        self.static = StaticInputs(max_bs, max_pages, device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if not eager:
            self._capture_all()

    def can_run(self, batch: ForwardBatch) -> bool:
        return (batch.is_decode and batch.num_seqs <= self.sizes[-1]
                and batch.page_table.shape[1] <= self.max_pages)

    def run(self, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        bs = batch.num_seqs
        padded = self.sizes[bisect.bisect_left(self.sizes, bs)]
        self.static.load(batch, padded)
        if self.eager:
            logits, hidden = self.forward(self.static.batch(padded, self.kv_cache,
                                                            self.state_cache))
        else:
            self.graphs[padded].replay()
            logits, hidden = self.outputs[padded]
        return logits[:bs], hidden[:bs]

    @torch.inference_mode()
    def _capture_all(self) -> None:
        """Largest size first so smaller graphs reuse its memory pool; padding rows only."""
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for bs in reversed(self.sizes):
                batch = self.static.batch(bs, self.kv_cache, self.state_cache)
                for _ in range(2):  # warm-up: Triton compiles and autotunes outside capture
                    self.forward(batch)
                # no collective of the warm-up may still be pending: NCCL's watchdog thread
                # polls those, and such polls invalidate a capture
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                # thread_local: other threads' CUDA calls (the NCCL watchdog's event queries)
                # must not invalidate this thread's capture
                with torch.cuda.graph(graph, pool=pool, stream=stream,
                                      capture_error_mode="thread_local"):
                    self.outputs[bs] = self.forward(batch)
                pool = graph.pool()
                self.graphs[bs] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
