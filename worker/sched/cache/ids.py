"""The shared free-list logic behind the page and state-slot allocators: hands out the ints
1..size-1 (0 is reserved as a padding / dummy target). Pure Python; must not import torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar


class IntegrityError(RuntimeError):
    """An allocator's (or cache's) internal bookkeeping is inconsistent."""


class _IdAllocator:
    """Free list of the ids 1..size-1; id 0 is reserved and never handed out.

    Order is LIFO: `free` pushes ids in the order given, `allocate` pops from the top, so the
    most recently freed ids are reused first. A fresh (or reset) allocator hands out 1, 2, 3, ...
    Every operation is O(1) per id; failed calls raise before changing anything.
    Subclasses set `_noun` (for messages) and `_out_of_ids` (raised when short).
    """

    _noun: ClassVar[str] = "id"
    _out_of_ids: ClassVar[type[RuntimeError]] = RuntimeError

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"need at least the reserved {self._noun} 0, got size {size}")
        self._size = size
        self._free: list[int] = []
        self._held: set[int] = set()
        self.reset()

    @property
    def num_free(self) -> int:
        """Ids that `allocate` can hand out now."""
        return len(self._free)

    @property
    def num_total(self) -> int:
        """Ids that can ever be handed out (size - 1: id 0 is reserved)."""
        return self._size - 1

    def can_allocate(self, n: int) -> bool:
        """Whether `allocate(n)` would succeed."""
        _check_count(n)
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        """Take `n` ids off the free list; raises the subclass's out-of-ids error (taking
        nothing) when fewer than `n` are free."""
        _check_count(n)
        if n > len(self._free):
            raise self._out_of_ids(
                f"asked for {n} {self._noun}s, only {len(self._free)} of {self.num_total} free")
        taken = [self._free.pop() for _ in range(n)]
        self._held.update(taken)
        return taken

    def _release(self, ids: Iterable[int]) -> None:
        """Return held ids to the free list. Raises ValueError (returning nothing) on id 0, an
        id out of range, an id that is not held, or an id repeated within `ids`."""
        ids = list(ids)
        seen: set[int] = set()
        for i in ids:
            if i == 0:
                raise ValueError(f"{self._noun} 0 is reserved and is never allocated")
            if not 0 < i < self._size:
                raise ValueError(f"{self._noun} {i} out of range 1..{self._size - 1}")
            if i not in self._held or i in seen:
                raise ValueError(f"double free of {self._noun} {i} (not allocated)")
            seen.add(i)
        self._held.difference_update(ids)
        self._free.extend(ids)

    def check_integrity(self) -> None:
        """Raise IntegrityError unless the free list has no duplicates, is disjoint from the
        held set, and the two together are exactly 1..size-1."""
        free = set(self._free)
        if len(free) != len(self._free):
            raise IntegrityError(f"duplicate {self._noun}s on the free list")
        if both := free & self._held:
            raise IntegrityError(f"{self._noun}s both free and held: {sorted(both)[:8]}")
        if (everything := free | self._held) != set(range(1, self._size)):
            odd = everything.symmetric_difference(range(1, self._size))
            raise IntegrityError(f"{self._noun}s lost or foreign: {sorted(odd)[:8]}")

    def reset(self) -> None:
        """Forget every allocation: all ids free again, in the fresh order 1, 2, 3, ..."""
        self._free = list(range(self._size - 1, 0, -1))
        self._held = set()


def _check_count(n: int) -> None:
    if n < 0:
        raise ValueError(f"cannot allocate a negative count ({n})")
