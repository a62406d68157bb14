"""Executes `StepPlan`s on one rank: zero fresh state slots, copy cached states, build the
batch, run the model, sample. `launch` leaves the sampled tokens on the device (the overlap
loop plans the next step meanwhile and feeds them back as `future_token`s); `resolve` copies
them to the host.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from qnext.worker.config import Config

from qnext.worker.runtime.inputs import SeqChunk, build_forward_batch
from qnext.worker.runtime.memory import make_memory_plan
from qnext.worker.runtime.model_runner import ModelRunner
from qnext.worker.runtime.page_table import DevicePageTable
from qnext.worker.runtime.penalties import PenaltyTracker
from qnext.worker.runtime.sampler import SampleOutput, Sampler
from qnext.worker.runtime.transfer import Download, to_device, to_device_many
from qnext.worker.runtime.warmup import warm_up
from qnext.worker.sched.memory import MemoryPlan
from qnext.worker.sched.plan import SampledToken, SeqWork, StepPlan, StepResult


@dataclass
class Launched:
    """A step whose forward and sampling are queued on the device."""

    plan: StepPlan
    seq_ids: list[int]  # sequences that sampled, in output order
    output: SampleOutput | None
    download: Download | None = None  # the output on its way to the host (`resolve` reads it)


class PlanExecutor:
    # NOTE: False on TP followers: nobody resolves their steps, so no device-to-host copy of
    # the sampled tokens is queued there (the spec executor reads its own, and keeps True)
    downloads_outputs = True

    def __init__(self, runner: ModelRunner, eos_token_ids: tuple[int, ...]) -> None:
        vocab = runner.cfg.model.vocab_size
        self.runner = runner
        self.sampler = Sampler(vocab, eos_token_ids, runner.device)
        self.penalties = PenaltyTracker(vocab, runner.device)
        self.page_table = DevicePageTable(runner.device)

    def plan_memory(self, cfg: Config, strategy: str, overlap: bool) -> MemoryPlan:
        """This rank's pool sizes for `cfg` (a collective minimum over TP ranks)."""
        return make_memory_plan(cfg, self.runner.model, strategy, overlap)

    def install_pools(self, cfg: Config, plan: MemoryPlan) -> None:
        """Free the current pools (if any), then allocate `plan`'s for `cfg`."""
        runner = self.runner
        if runner.kv_pool is not None:
            runner.kv_pool = runner.state_pool = None
            gc.collect()
            if runner.device.type == "cuda":
                torch.cuda.empty_cache()
        runner.cfg = cfg
        runner.allocate_pools(plan.num_pages, plan.num_state_slots)

    def warm_up(self, max_tokens: int | None = None) -> int:
        """Compile the kernels' shape classes now (runtime/warmup.py); returns the forwards."""
        return warm_up(self.runner, max_tokens)

    def close(self) -> None:
        """Release the decode graphs before the process group goes (`ModelRunner.close`)."""
        self.runner.close()

    @torch.inference_mode()
    def launch(self, plan: StepPlan, previous: Launched | None = None) -> Launched:
        plan = self.prepare(plan)
        return self.forward_and_sample(plan, previous)[0]

    def prepare(self, plan: StepPlan) -> StepPlan:
        """Before the forward: the plan with full page lists (plans carry deltas), released
        sequences' penalties dropped, fresh slots zeroed, cached states copied, penalty
        histories registered. Returns the expanded plan."""
        plan = self.page_table.apply(plan)
        self.penalties.release([s for s in plan.released if s in self.penalties])
        if plan.zero_slots:
            self.runner.state_pool.zero(to_device(plan.zero_slots, self.runner.device))
        if plan.copy_slots:
            self.runner.state_pool.copy_pairs(plan.copy_slots)
        for work in plan.work:
            if work.history is not None:
                self.penalties.register(work.seq_id, work.history, work.num_prompt)
        return plan

    def forward_and_sample(self, plan: StepPlan, previous: Launched | None = None
                           ) -> tuple[Launched, torch.Tensor, torch.Tensor]:
        """One forward over `plan.work` and the draws; also returns the final hidden states
        [T, H] and the batch's cu_seqlens (what a draft head consumes)."""
        chunks = [SeqChunk(list(w.token_ids) or [0], w.prefix_len, w.state_slot,
                           w.page_ids, w.snapshot_slot, w.snapshot_len)
                  for w in plan.work]
        batch = build_forward_batch(chunks, self.runner.kv_pool, self.runner.state_pool,
                                    self.runner.device, page_table=self.pages_of(plan.work))
        self._feed_future_tokens(plan.work, batch.input_ids, batch.cu_seqlens, previous)
        logits, hidden = self.runner.run_model(batch)
        rows = [i for i, w in enumerate(plan.work) if w.sample is not None]
        seq_ids = [plan.work[i].seq_id for i in rows]
        if not rows:
            return Launched(plan, [], None), hidden, batch.cu_seqlens
        specs = [plan.work[i].sample for i in rows]
        if len(rows) < logits.shape[0]:  # (every row samples in a decode step: no gather)
            logits = logits.index_select(0, to_device(rows, logits.device))
        output = self.sampler.sample(logits.float(), seq_ids, specs, self.penalties)
        self.penalties.update(seq_ids, output.token_ids)
        download = Download(output) if self.downloads_outputs else None
        return Launched(plan, seq_ids, output, download), hidden, batch.cu_seqlens

    def pages_of(self, work) -> torch.Tensor:
        """The page table of these SeqWorks (full lists, as `prepare` returns them), from the
        device-resident rows."""
        width = max(len(w.page_ids) for w in work)
        return self.page_table.gather([w.seq_id for w in work], width)

    def _feed_future_tokens(self, work: tuple[SeqWork, ...], input_ids: torch.Tensor,
                            cu_seqlens: torch.Tensor, previous: Launched | None) -> None:
        """Copy, on the device, the previous step's sampled tokens into their decode slots."""
        future = [i for i, w in enumerate(work) if w.future_token]
        if not future:
            return
        if previous is None or previous.output is None:
            raise RuntimeError("a future token needs the previous step's sampled tokens")
        index, rows = rows_in(previous.seq_ids, work, future, input_ids.device)
        input_ids[cu_seqlens[index]] = previous.output.token_ids[rows]

    def resolve(self, launched: Launched) -> StepResult:
        """Wait for the step and return its tokens as plain data."""
        if launched.output is None:
            return StepResult(launched.plan.step_id, ())
        token_ids, logprobs, top_ids, top_lps = launched.download.lists()
        top = _top_lists(top_ids, top_lps, launched.plan.work)
        tokens = tuple(
            SampledToken(seq_id, token_ids[i], logprobs[i] if logprobs else None, top[i])
            for i, seq_id in enumerate(launched.seq_ids))
        return StepResult(launched.plan.step_id, tokens)

    def run(self, plan: StepPlan) -> StepResult:
        return self.resolve(self.launch(plan))


def rows_in(seq_ids: list[int], work, which: list[int], device: torch.device
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the indices `which` into `work`, their sequences' rows in `seq_ids`) on the device:
    where the previous step's outputs for this step's sequences are."""
    row_of = {seq_id: row for row, seq_id in enumerate(seq_ids)}
    return to_device_many([which, [row_of[work[b].seq_id] for b in which]], device)


def _top_lists(ids: list | None, lps: list | None, work: tuple[SeqWork, ...]) -> list[tuple]:
    specs = [w.sample for w in work if w.sample is not None]
    if ids is None:
        return [()] * len(specs)
    return [tuple(zip(ids[i][:s.params.top_logprobs], lps[i][:s.params.top_logprobs]))
            for i, s in enumerate(specs)]
