"""The value types of `HybridRadixCache`: the tree node handle and the NamedTuples its methods
return. Pure Python, ints only; must not import torch.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CacheStats", "Evicted", "Insert", "Match", "RadixNode"]


class RadixNode:
    """One tree node; an opaque handle for callers (pass it to `lock` / `unlock`)."""

    __slots__ = ("children", "key", "kv_locks", "page_ids", "parent", "state_locks",
                 "state_slot", "tick", "uid")

    def __init__(self, key: tuple[int, ...], page_ids: list[int], state_slot: int | None,
                 parent: RadixNode | None, tick: int, uid: int) -> None:
        self.key = key
        self.page_ids = page_ids
        self.state_slot = state_slot
        self.parent = parent
        self.children: dict[tuple[int, ...], RadixNode] = {}
        self.kv_locks = 0
        self.state_locks = 0
        self.tick = tick
        self.uid = uid

    def __repr__(self) -> str:
        return (f"RadixNode(uid={self.uid}, pages={self.page_ids}, slot={self.state_slot}, "
                f"locks={self.kv_locks}/{self.state_locks})")


class Match(NamedTuple):
    """Usable prefix: `num_tokens` tokens, covered by `page_ids`, ending at `node` whose state
    is `state_slot` (None only when nothing usable matched and `node` is the root).
    `kv_num_tokens` >= num_tokens is the whole-page KV match, stateful or not."""

    num_tokens: int
    page_ids: list[int]
    node: RadixNode
    state_slot: int | None
    kv_num_tokens: int


class Insert(NamedTuple):
    """`num_cached_tokens` were already present; the caller frees `duplicate_page_ids` (the
    first num_cached_tokens / page_size pages it passed) and, unless `state_slot_used`, the
    slot it passed. `node` ends exactly at the end of the inserted tokens."""

    num_cached_tokens: int
    duplicate_page_ids: list[int]
    state_slot_used: bool
    node: RadixNode


class Evicted(NamedTuple):
    """Ids removed from the tree; the caller returns them to its allocators."""

    page_ids: list[int]
    state_slots: list[int]


class CacheStats(NamedTuple):
    """Pages and slots held by the tree, split into evictable and protected (locked)."""

    num_cached_pages: int
    num_cached_slots: int
    evictable_pages: int
    protected_pages: int
    evictable_slots: int
    protected_slots: int
