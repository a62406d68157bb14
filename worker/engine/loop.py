"""The two step loops over a scheduler and a plan executor.

NormalLoop: plan, run, read the tokens, update — the device idles while the host plans.
OverlapLoop: plan step N+1 and queue it on the device *before* reading step N's tokens, so host
work (scheduling, detokenising, bookkeeping) hides behind the forward. Decodes of N+1 take
N's tokens straight from the device (`future_token`); a sequence that N finished wastes one
decode in N+1 whose token is dropped. Both loops produce identical tokens.
"""

from __future__ import annotations

from qnext.worker.runtime.worker import Launched, PlanExecutor
from qnext.worker.sched.scheduler import Scheduler, RequestOutput


class NormalLoop:
    def __init__(self, scheduler: Scheduler, executor: PlanExecutor) -> None:
        self.scheduler, self.executor = scheduler, executor

    @property
    def idle(self) -> bool:
        return not self.scheduler.has_work

    def step(self) -> list[RequestOutput]:
        plan = self.scheduler.schedule()
        if plan is None:
            return self.scheduler.take_events()
        return self.scheduler.update(plan, self.executor.run(plan))

    def settle(self) -> list[RequestOutput]:
        """Nothing is ever in flight between steps of the normal loop."""
        return []


class OverlapLoop:
    def __init__(self, scheduler: Scheduler, executor: PlanExecutor) -> None:
        self.scheduler, self.executor = scheduler, executor
        self.in_flight: Launched | None = None

    @property
    def idle(self) -> bool:
        return self.in_flight is None and not self.scheduler.has_work

    def step(self) -> list[RequestOutput]:
        previous, self.in_flight = self.in_flight, None
        plan = self.scheduler.schedule()
        if plan is not None:
            self.in_flight = self.executor.launch(plan, previous)
        if previous is None:
            return self.scheduler.take_events()
        return self.scheduler.update(previous.plan, self.executor.resolve(previous))

    def settle(self) -> list[RequestOutput]:
        """Retire the step in flight, planning nothing new; returns its outputs."""
        previous, self.in_flight = self.in_flight, None
        if previous is None:
            return []
        return self.scheduler.update(previous.plan, self.executor.resolve(previous))
