"""`SpecExecutor`: a `PlanExecutor` that speculates (NEXTN). One step runs, in order:
1. the forward of the ordinary work (prompt chunks, decodes of sequences that do not
   speculate) and its draws; the draft head then follows every speculating prompt chunk
   and drafts after the ones that end their prompt (this reads the draws: such a step waits
   for the device);
2. one verify forward over the speculating decodes — root + k proposals each, a chain or a
   tree (ancestor mask, positions by depth), the recurrent states of every step kept apart
   (`SpecStateBuffers`), the pool untouched;
3. acceptance (`accept_drafts`), the commit of each sequence's last kept step into its slot
   and of a planned snapshot when the kept path reaches it (on the device: a missed one goes
   to the dummy slot 0); chains then draft their next proposals on the device
   (`spec_chain.py`). Trees need the kept paths on the host for their K/V compaction and
   the draft head over the kept path: a tree step waits for the device, so trees run in the
   normal loop only.
`launch` queues all of it without waiting for the device (but for prompt drafting and
trees); `resolve` reads the tokens. In the overlap loop a verify planned while the sequence's last
one is in flight (`SeqWork.after_verify`) takes its root (that verify's bonus token), its
prefix shift and its sampling-counter shift (the accepted count) on the device. On CUDA the
chain verify and drafting replay CUDA graphs, captured at every pool install (the verify's
with the verify buffers as inputs); trees and the head over prompt chunks run eagerly with
host-side drafting (`spec_draft.py`). Under TP every rank runs it on the same plan
(engine/tp.py): logits and hidden states are identical on all ranks, so drafts and acceptance
agree. Counters for `stats()`: verify steps, verified sequences, proposals, accepted — of every
verify run, including the one the overlap loop spends on a sequence its previous verify
finished (its tokens are dropped).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from qnext.worker.runtime.cuda_graph import StepGraphs
from qnext.worker.runtime.inputs import SeqChunk, build_verify_batch
from qnext.worker.runtime.model_runner import ModelRunner, capture_or_log
from qnext.worker.runtime.spec_accept import accept_drafts
from qnext.worker.runtime.spec_chain import DraftGraphs, draft_chains
from qnext.worker.runtime.spec_draft import Extend, MTPDrafter
from qnext.worker.runtime.spec_launch import (
    SpecLaunched,
    future_roots,
    shifted_verify,
    snapshot_kept,
)
from qnext.worker.runtime.spec_states import SpecStateBuffers
from qnext.worker.runtime.transfer import Download, to_device, to_device_many
from qnext.worker.runtime.worker import Launched, PlanExecutor
from qnext.worker.sched.plan import SampledToken, SeqWork, StepPlan, StepResult


class SpecExecutor(PlanExecutor):
    def __init__(self, runner: ModelRunner, eos_token_ids: tuple[int, ...]) -> None:
        super().__init__(runner, eos_token_ids)
        self.n = runner.cfg.spec.draft_tokens
        self.drafter = MTPDrafter(runner.cfg, runner.model)
        self.trees = runner.cfg.spec.topk > 1
        self.counters = {"verify_steps": 0, "verify_seqs": 0, "proposed": 0, "accepted": 0}
        self.buffers: SpecStateBuffers | None = None
        self.verify_graphs: StepGraphs | None = None
        self.draft_graphs: DraftGraphs | None = None

    def install_pools(self, cfg, plan) -> None:
        """The plan's pools, the draft head's KV pool and the verify buffers of every running
        request (the plan reserved them: `reserve_spec_states`)."""
        self.drafter.kv_pool = self.buffers = self.verify_graphs = self.draft_graphs = None
        super().install_pools(cfg, plan)
        self.drafter.allocate(cfg, plan.num_pages)
        self.buffers = SpecStateBuffers(self.runner.state_pool, plan.max_running_requests,
                                        self.n)
        if not self.trees:
            self.verify_graphs = self.runner.try_graphs(self.n, self.buffers,
                                                        plan.max_running_requests)
        if self.verify_graphs is not None:
            self.draft_graphs = capture_or_log(
                lambda: DraftGraphs(self.verify_graphs, self.drafter), "draft")

    def close(self) -> None:
        self.verify_graphs = self.draft_graphs = None  # before the decode graphs (NCCL work)
        super().close()

    def spec_stats(self) -> dict[str, float]:
        c = self.counters
        return {**c, "accept_length": (c["accepted"] / c["verify_seqs"] + 1
                                       if c["verify_seqs"] else 0.0),
                "accept_rate": c["accepted"] / c["proposed"] if c["proposed"] else 0.0}

    @torch.inference_mode()
    def launch(self, plan: StepPlan, previous: Launched | None = None) -> SpecLaunched:
        plan = self.prepare(plan)
        self.drafter.release(plan.released)
        launched = SpecLaunched(plan, [], None)
        ordinary = tuple(w for w in plan.work if not w.spec_verify)
        if ordinary:
            part, hidden, cu = self.forward_and_sample(replace(plan, work=ordinary), previous)
            launched.ordinary, launched.seq_ids, launched.output = part, part.seq_ids, part.output
            if any(w.spec_draft for w in ordinary):  # (reading cu_seqlens waits for the device)
                launched.host = {t.seq_id: [t] for t in super().resolve(part).tokens}
                self._follow_prompts(ordinary, hidden, cu.tolist(), launched.host)
        verify = [w for w in plan.work if w.spec_verify]
        if verify:
            self._launch_verify(verify, previous, launched)
        return launched

    def resolve(self, launched: Launched) -> StepResult:
        tokens = launched.host
        if tokens is None:
            part = launched.ordinary
            tokens = {t.seq_id: [t] for t in super().resolve(part).tokens} if part else {}
        if launched.verified:
            tokens.update(self._resolve_verify(launched))
        return StepResult(launched.plan.step_id, tuple(t for w in launched.plan.work
                                                       for t in tokens.get(w.seq_id, ())))

    def _follow_prompts(self, work: tuple[SeqWork, ...], hidden: torch.Tensor,
                        cu: list[int], tokens: dict[int, list[SampledToken]]) -> None:
        items = []
        for i, w in enumerate(work):
            if not w.spec_draft:
                continue
            sampled = tokens[w.seq_id][0].token_id if w.sample is not None else None
            item = self.drafter.prompt_chunk(w.seq_id, w.prefix_len, list(w.token_ids),
                                             hidden[cu[i]:cu[i + 1]], list(w.page_ids), sampled)
            if item is not None:
                items.append(item)
        self.drafter.extend(items, self.runner.state_pool)

    def _launch_verify(self, work: list[SeqWork], previous: Launched | None,
                       launched: SpecLaunched) -> None:
        runner, n, vocab = self.runner, self.n, self.runner.cfg.model.vocab_size
        drafts = [self.drafter.proposals(w.seq_id) for w in work]
        roots, shift = future_roots(work, previous, runner.device)
        rows = self._rows(roots, drafts)
        parents = [[-1, *p] for _, p in drafts] if self.trees else None
        chunks = [SeqChunk([0] * n, w.prefix_len, w.state_slot, w.page_ids)
                  for w in work]
        buffers = self.buffers.rows(len(work))
        batch = replace(build_verify_batch(chunks, runner.kv_pool, runner.state_pool, buffers,
                                           runner.device, parents, self.pages_of(work)),
                        input_ids=rows.view(-1))
        if shift is not None:
            batch = shifted_verify(batch, shift, n)
        graphed = self.verify_graphs is not None and self.verify_graphs.can_run(batch)
        logits, hidden = self.verify_graphs.run(batch) if graphed else runner.model(batch)
        acc = accept_drafts(rows, logits[:, :vocab].float().reshape(len(work), n, vocab),
                            [w.sample for w in work], parents, counter_shift=shift)
        buffers.commit(runner.state_pool, batch.state_slots, acc.commit_steps)
        snapshot_kept(work, acc, buffers, runner.state_pool, runner.device, shift)
        launched.verified, launched.acc = [w.seq_id for w in work], acc
        # one device-to-host copy, queued now: [kept, tokens (n), tree path (n)] per row
        launched.accepted = Download([torch.cat(
            [acc.num_accepted[:, None], acc.token_ids, *([acc.path] if self.trees else [])],
            dim=1)])
        if self.trees:
            self._finish_trees(work, hidden, launched.accepted.lists()[0])
        else:
            self._draft_chains(work, batch, hidden, acc, graphed)

    def _finish_trees(self, work: list[SeqWork], hidden: torch.Tensor, rows: list) -> None:
        """The kept paths' K/V moved into place and the head run over them: both read the
        paths on the host (`rows`: [kept, tokens (n), path (n)] each), so a tree step waits
        for the device here (every rank does)."""
        n = self.n
        kept, ids = [row[0] for row in rows], [row[1:n + 1] for row in rows]
        paths = [row[n + 1:n + 2 + a] for row, a in zip(rows, kept)]
        self._compact_kv(work, paths)
        self.drafter.extend([Extend(w.seq_id, w.prefix_len, ids[b][:kept[b] + 1],
                                    hidden[[b * n + t for t in paths[b]]],
                                    list(w.page_ids), True)
                             for b, w in enumerate(work)], self.runner.state_pool)

    def _resolve_verify(self, launched: SpecLaunched) -> dict[int, list[SampledToken]]:
        rows = launched.accepted.lists()[0]  # [kept, tokens (n), ...] per row
        self._count(len(rows), sum(row[0] for row in rows))
        return {seq_id: [SampledToken(seq_id, t) for t in row[1:row[0] + 2]]
                for seq_id, row in zip(launched.verified, rows)}

    def _draft_chains(self, work: list[SeqWork], batch, hidden: torch.Tensor, acc,
                      graphed: bool) -> None:
        """The next chains on the device: one graph replay after a graphed verify."""
        lens = to_device([len(w.page_ids) for w in work], self.runner.device)
        if graphed and self.draft_graphs is not None:
            chains = self.draft_graphs.run(acc.token_ids, acc.num_accepted, lens)
        else:
            chains = draft_chains(self.drafter, batch, hidden, acc.token_ids,
                                  acc.num_accepted, lens)
        self.drafter.propose_chains([w.seq_id for w in work], chains)

    def _rows(self, roots: torch.Tensor, drafts: list) -> torch.Tensor:
        """[B, n] int64 on the device: each sequence's root, then its proposals (host lists,
        or device rows from `draft_chains`)."""
        device = self.runner.device
        props = torch.stack([t if isinstance(t, torch.Tensor) else to_device(t, device)
                             for t, _ in drafts])
        return torch.cat([roots[:, None], props.to(torch.int64)], dim=1)

    def _count(self, seqs: int, accepted: int) -> None:
        self.counters["verify_steps"] += 1
        self.counters["verify_seqs"] += seqs
        self.counters["proposed"] += seqs * (self.n - 1)
        self.counters["accepted"] += accepted

    def _compact_kv(self, work: list[SeqWork], paths: list[list[int]]) -> None:
        """Tree verify wrote node t's K/V at position root + t; the kept path's node at depth
        d moves to root + d, where the sequence continues (page size 1: a page per position;
        sources never lie below their destinations)."""
        src, dst = [], []
        for w, path in zip(work, paths):
            for depth, node in enumerate(path):
                if node != depth:
                    src.append(w.page_ids[w.prefix_len + node])
                    dst.append(w.page_ids[w.prefix_len + depth])
        if src:
            pool, device = self.runner.kv_pool, self.runner.device
            src_t, dst_t = to_device_many([src, dst], device)
            pool.k[:, dst_t] = pool.k[:, src_t]
            pool.v[:, dst_t] = pool.v[:, src_t]
