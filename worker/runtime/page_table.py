"""Every running sequence's KV page ids on the device (and on the host), kept from the plans'
page deltas.

A plan sends each sequence only the page ids added since its previous SeqWork
(`sched/plan.py`), so the page table a forward reads is built on the device: one row per
sequence, written where the deltas land, and the rows of a batch gathered per step. The host
work per step is O(new pages) instead of O(context) — a few hundred sequences of thousands of
pages each cost tens of milliseconds a step otherwise. Entries past a sequence's length may
hold stale ids (a shortened list, an earlier owner of the row); kernels read pages only below
each sequence's length. The table grows (rows, width) by doubling when a plan needs more.
"""

from __future__ import annotations

import torch

from qnext.worker.runtime.transfer import to_device, to_device_many
from qnext.worker.sched.plan import PageLists, StepPlan


class DevicePageTable:
    def __init__(self, device: torch.device | str, rows: int = 16, width: int = 256) -> None:
        self.lists = PageLists()  # the host copy of the same lists
        self.device = torch.device(device)
        self.table = torch.zeros(rows, width, dtype=torch.int64, device=self.device)
        self.row_of: dict[int, int] = {}
        self.free = list(range(rows - 1, -1, -1))

    def apply(self, plan: StepPlan) -> StepPlan:
        """Take in a plan as planned (page deltas): write its deltas into the device rows and
        return it with full page lists (`PageLists.expand`); its released sequences are
        forgotten by both."""
        self._write(plan)
        return self.lists.expand(plan)

    def _write(self, plan: StepPlan) -> None:
        rows: list[int] = []
        cols: list[int] = []
        vals: list[int] = []
        for w in plan.work:
            row, end = self._row(w.seq_id), w.pages_from + len(w.page_ids)
            self._fit_width(end)
            rows += [row] * len(w.page_ids)
            cols += range(w.pages_from, end)
            vals += w.page_ids
        if vals:
            r, c, v = to_device_many([rows, cols, vals], self.device)
            self.table[r, c] = v
        for seq_id in plan.released:
            row = self.row_of.pop(seq_id, None)
            if row is not None:
                self.free.append(row)

    def gather(self, seq_ids: list[int], width: int) -> torch.Tensor:
        """[len(seq_ids), width] int64: the sequences' rows, first `width` pages."""
        rows = to_device([self.row_of[s] for s in seq_ids], self.device)
        return self.table.index_select(0, rows)[:, :width]

    def _row(self, seq_id: int) -> int:
        row = self.row_of.get(seq_id)
        if row is None:
            if not self.free:
                self._grow(rows=2 * self.table.shape[0], width=self.table.shape[1])
            row = self.row_of[seq_id] = self.free.pop()
        return row

    def _fit_width(self, pages: int) -> None:
        width = self.table.shape[1]
        if pages > width:
            while width < pages:
                width *= 2
            self._grow(rows=self.table.shape[0], width=width)

    def _grow(self, rows: int, width: int) -> None:
        old = self.table
        self.table = torch.zeros(rows, width, dtype=old.dtype, device=self.device)
        self.table[:old.shape[0], :old.shape[1]] = old
        self.free = list(range(rows - 1, old.shape[0] - 1, -1)) + self.free
