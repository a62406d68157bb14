"""`StateSlotAllocator`: hands out recurrent-state slots 1..num_slots-1 (slot 0 is the dummy
write target of padded batch entries). Pure Python; must not import torch.
"""

from __future__ import annotations

from qnext.worker.sched.cache.ids import IntegrityError, _IdAllocator

__all__ = ["IntegrityError", "OutOfSlots", "StateSlotAllocator"]


class OutOfSlots(RuntimeError):
    """Fewer state slots are free than asked for; nothing was allocated."""


class StateSlotAllocator(_IdAllocator):
    """Free list of state slots 1..num_slots-1; slot 0 is reserved (padded CUDA-graph entries
    write their state there) and never handed out. LIFO: the most recently freed slots are
    reused first; a fresh allocator hands out 1, 2, 3, ...

    `allocate(n)` / `allocate_one()` raise OutOfSlots, allocating nothing, when short.
    `free(slots)` raises ValueError, freeing nothing, on slot 0, a slot out of range, or a
    slot that is not allocated (a double free).
    """

    _noun = "state slot"
    _out_of_ids = OutOfSlots

    def __init__(self, num_slots: int) -> None:
        super().__init__(num_slots)

    def allocate_one(self) -> int:
        """One slot; raises OutOfSlots when none is free."""
        return self.allocate(1)[0]

    def free(self, slots: list[int]) -> None:
        """Return allocated slots; see the class docstring for the errors."""
        self._release(slots)
