"""Integer bookkeeping for the two cache pools — KV page ids and recurrent-state slots, each
with id 0 reserved — and the hybrid radix prefix index over them. Pure Python; no torch.
"""

from __future__ import annotations

from qnext.worker.sched.cache.ids import IntegrityError
from qnext.worker.sched.cache.pages import OutOfPages, PageAllocator
from qnext.worker.sched.cache.radix import HybridRadixCache
from qnext.worker.sched.cache.states import OutOfSlots, StateSlotAllocator

__all__ = [
    "HybridRadixCache",
    "IntegrityError",
    "OutOfPages",
    "OutOfSlots",
    "PageAllocator",
    "StateSlotAllocator",
]
