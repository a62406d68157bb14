"""Integer bookkeeping for the two cache pools: KV page ids and recurrent-state slots, each
with id 0 reserved. Pure Python; must not import torch.
"""

from __future__ import annotations

from qnext.worker.sched.cache.ids import IntegrityError
from qnext.worker.sched.cache.pages import OutOfPages, PageAllocator
from qnext.worker.sched.cache.states import OutOfSlots, StateSlotAllocator

__all__ = [
    "IntegrityError",
    "OutOfPages",
    "OutOfSlots",
    "PageAllocator",
    "StateSlotAllocator",
]
