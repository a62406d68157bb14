"""A speculative step in flight (`SpecLaunched`) and the device-side pieces that let the next
step be launched before it resolves (the overlap loop):

- `future_roots`: a verify's root still on the device — the previous step's bonus token after
  that sequence's verify (then the prefix and sampling counter move by its accepted count),
  or its plain draw;
- `shifted_verify`: a verify batch moved to the prefixes known on the device only;
- `snapshot_kept`: a planned snapshot copied from the verify buffers when the kept path
  reaches it, decided on the device (a miss writes the dummy slot 0), so it never waits for
  the accepted counts; the scheduler drops it by the same rule once they are known.
Page size 1 throughout (speculative decoding's, `sched/spec.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from qnext.worker.forward import ForwardBatch
from qnext.worker.runtime.spec_accept import Acceptance
from qnext.worker.runtime.spec_states import SpecStateBuffers
from qnext.worker.runtime.transfer import Download, to_device, to_device_many
from qnext.worker.runtime.worker import Launched, rows_in
from qnext.worker.sched.plan import SampledToken, SeqWork


@dataclass
class SpecLaunched(Launched):
    """`seq_ids` / `output` are the ordinary part's draws (what the next step's future tokens
    read) and `ordinary` that part; `verified` the verify rows' sequences with their
    acceptance `acc`; `host` the ordinary tokens when launching had to read them already
    (prompt drafting)."""

    ordinary: Launched | None = None
    verified: list[int] | None = None
    acc: Acceptance | None = None
    accepted: Download | None = None  # [kept, tokens, (tree path)] per row, to the host
    host: dict[int, list[SampledToken]] | None = None


def future_roots(work: list[SeqWork], previous: Launched | None, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B] verify roots on the device and the [B] prefix shifts (None: every prefix is known):
    a host root, the previous step's bonus token after its verify (shift: its accepted count),
    or the previous step's draw."""
    roots = to_device([w.token_ids[0] if w.token_ids else 0 for w in work], device)
    future = [b for b, w in enumerate(work) if w.future_token]
    if not future:
        return roots, None
    if previous is None:
        raise RuntimeError("a future root needs the previous step in flight")
    after = [b for b in future if work[b].after_verify]
    drawn = [b for b in future if not work[b].after_verify]
    shift = None
    if after:
        acc = previous.acc
        index, rows = rows_in(previous.verified, work, after, device)
        roots[index] = acc.bonus_ids[rows]
        shift = torch.zeros_like(roots).index_copy_(0, index, acc.num_accepted[rows])
    if drawn:
        index, rows = rows_in(previous.seq_ids, work, drawn, device)
        roots[index] = previous.output.token_ids[rows]
    return roots, shift


def shifted_verify(batch: ForwardBatch, shift: torch.Tensor, n: int) -> ForwardBatch:
    """A chain verify batch (n tokens a sequence) whose sequences start `shift` [B]
    positions later: positions, lengths and K/V slots (from the page table) move."""
    positions = batch.positions + shift.repeat_interleave(n)
    kv_locs = batch.page_table.gather(1, positions.view(-1, n)).view(-1)
    return replace(batch, positions=positions, seq_lens=batch.seq_lens + shift, kv_locs=kv_locs)


def snapshot_kept(work: list[SeqWork], acc: Acceptance, buffers: SpecStateBuffers, pool,
                  device: torch.device, shift: torch.Tensor | None) -> None:
    """extra_buffer: a snapshot planned inside a verify's range (the state after
    `snapshot_len` tokens, step snapshot_len - prefix - 1 of the kept path, the prefix moved
    by `shift` [B] if given) is copied to its slot when the kept path reaches that step, else
    to the dummy slot 0."""
    planned = [b for b, w in enumerate(work) if w.snapshot_slot is not None]
    if not planned:
        return
    rows, slots, steps = to_device_many(
        [planned, [work[b].snapshot_slot for b in planned],
         [work[b].snapshot_len - work[b].prefix_len - 1 for b in planned]], device)
    if shift is not None:
        steps = steps - shift[rows]
    reached = (steps >= 0) & (steps <= acc.num_accepted[rows])
    nodes = acc.path[rows, steps.clamp(0, acc.path.shape[1] - 1)].clamp(min=0)
    buffers.copy_out(pool, torch.where(reached, slots, 0), rows, nodes)

