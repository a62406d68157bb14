"""Page lists from the plans' deltas: `PageLists` (host) and `DevicePageTable` (device rows)
rebuild every sequence's full list from deltas, rewrites (pages_from 0), truncations and
released sequences, growing rows and width as needed."""

from __future__ import annotations

import random

import pytest

from qnext.worker.runtime.page_table import DevicePageTable
from qnext.worker.sched.plan import PageLists, SeqWork, StepPlan


def _work(seq_id: int, pages: list[int], sent: int) -> SeqWork:
    return SeqWork(seq_id, (1,), 0, seq_id + 1, tuple(pages[sent:]), pages_from=sent)


def test_random_deltas_rebuild_every_list():
    rng = random.Random(0)
    lists, sent = PageLists(), {}  # the host lists alone, as the scheduler tests use them
    table = DevicePageTable("cpu", rows=2, width=4)  # both grow
    truth: dict[int, list[int]] = {}
    for step in range(200):
        work, released = [], []
        for seq_id in rng.sample(range(12), 5):
            pages = truth.setdefault(seq_id, [])
            action = rng.random()
            if action < 0.1:  # a rewrite (cache hit, dedup): resend all
                pages[:] = [rng.randrange(1, 999) for _ in range(rng.randrange(1, 30))]
                sent[seq_id] = 0
            elif action < 0.2 and pages:  # rejected drafts: the tail goes
                keep = rng.randrange(len(pages))
                del pages[keep:]
                sent[seq_id] = min(sent.get(seq_id, 0), keep)
            pages += [rng.randrange(1, 999) for _ in range(rng.randrange(0, 4))]
            if not pages:
                pages.append(7)
            work.append(_work(seq_id, pages, sent.get(seq_id, 0)))
            sent[seq_id] = len(pages)
        idle = sorted(set(truth) - {w.seq_id for w in work})
        if step % 7 == 6 and idle:  # a finished sequence (no work in the plan that says so):
            released = [rng.choice(idle)]  # its row and list go, its id comes back fresh
        plan = StepPlan(step, tuple(work), released=tuple(released))
        full = lists.expand(plan)
        assert table.apply(plan) == full
        for w in full.work:
            assert list(w.page_ids) == truth[w.seq_id] and w.pages_from == 0
        got = table.gather([w.seq_id for w in full.work], max(len(p) for p in truth.values()))
        for row, w in zip(got.tolist(), full.work):
            assert row[:len(w.page_ids)] == list(w.page_ids)
        for seq_id in released:
            truth.pop(seq_id)
            sent.pop(seq_id, None)
    assert table.table.shape[0] >= 12 and table.table.shape[1] >= 30


def test_a_delta_without_its_prefix_is_refused():
    with pytest.raises(RuntimeError, match="delta"):
        PageLists().expand(StepPlan(0, (_work(3, [4, 5, 6], 2),)))
