"""Benchmark (not a test): the host work of one synthetic decode step in a worker, on CPU —
the plan's pickle round trip (rank 0 to a TP follower), the page deltas written into the
device page table and the plan expanded (`DevicePageTable.apply`), the batch's rows gathered
and `build_forward_batch`. B sequences of P pages each (page size 1), one new page a step.
No model runs: this is the per-step cost that grows with batch and context.

    PYTHONPATH=$PWD python scripts/bench_host_step.py
"""

from __future__ import annotations

import pickle
import time

from qnext.worker.runtime.inputs import SeqChunk, build_forward_batch
from qnext.worker.runtime.page_table import DevicePageTable
from qnext.worker.sched.plan import SeqWork, StepPlan


class _Pages:  # what build_forward_batch reads of a KV cache
    page_size = 1


def step_ms(B: int, P: int, steps: int = 20) -> tuple[float, int]:
    """Median host ms of a decode step and the plan's pickled size in bytes."""
    table = DevicePageTable("cpu")
    table.apply(StepPlan(0, tuple(SeqWork(s, (1,), P - 1, s + 1,
                                          tuple(range(s * P + 1, s * P + P + 1)))
                                  for s in range(B))))
    times, size = [], 0
    for step in range(1, steps + 1):
        plan = StepPlan(step, tuple(SeqWork(s, (1,), P - 1 + step, s + 1,
                                            (10**7 + s * 100 + step,), pages_from=P + step - 1)
                                    for s in range(B)))
        start = time.perf_counter()
        blob = pickle.dumps(plan)
        full = table.apply(pickle.loads(blob))
        chunks = [SeqChunk(list(w.token_ids), w.prefix_len, w.state_slot, w.page_ids)
                  for w in full.work]
        rows = table.gather([w.seq_id for w in full.work], max(len(c.page_ids) for c in chunks))
        build_forward_batch(chunks, _Pages(), None, "cpu", page_table=rows)
        times.append(time.perf_counter() - start)
        size = len(blob)
    return sorted(times)[len(times) // 2] * 1e3, size


if __name__ == "__main__":
    print("| sequences × pages each | host ms per step | plan bytes |")
    print("|---|---|---|")
    for B, P in ((64, 1280), (256, 2048)):
        ms, size = step_ms(B, P)
        print(f"| {B} × {P:,} | {ms:.2f} | {size:,} |")
