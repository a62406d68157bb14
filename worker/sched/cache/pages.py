"""`PageAllocator`: hands out KV page ids 1..num_pages-1 (page 0 is the padding target).
Pure Python; must not import torch.
"""

from __future__ import annotations

from qnext.worker.sched.cache.ids import IntegrityError, _IdAllocator

__all__ = ["IntegrityError", "OutOfPages", "PageAllocator"]


class OutOfPages(RuntimeError):
    """Fewer KV pages are free than asked for; nothing was allocated."""


class PageAllocator(_IdAllocator):
    """Free list of KV page ids 1..num_pages-1; page 0 is reserved (padded entries of a page
    table point at it) and never handed out. LIFO: the most recently freed pages are reused
    first; a fresh allocator hands out 1, 2, 3, ...

    `allocate(n)` raises OutOfPages, allocating nothing, when fewer than n are free.
    `free(page_ids)` raises ValueError, freeing nothing, on page 0, an id out of range, or a
    page that is not allocated (a double free).
    """

    _noun = "page"
    _out_of_ids = OutOfPages

    def __init__(self, num_pages: int) -> None:
        super().__init__(num_pages)

    def free(self, page_ids: list[int]) -> None:
        """Return allocated pages; see the class docstring for the errors."""
        self._release(page_ids)
