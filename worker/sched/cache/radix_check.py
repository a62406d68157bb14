"""`check_tree`: the from-scratch integrity check behind `HybridRadixCache.check_integrity`.
Pure Python; must not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qnext.worker.sched.cache.ids import IntegrityError

if TYPE_CHECKING:
    from qnext.worker.sched.cache.radix import HybridRadixCache
    from qnext.worker.sched.cache.radix_node import RadixNode

__all__ = ["check_tree"]


def check_tree(tree: HybridRadixCache) -> None:
    """Walk the whole tree and raise IntegrityError on: a malformed root; a cycle or a node
    reached twice; parent/child links that disagree; a child dict key other than the first
    page of the child's key; a key whose length is not page_size * number of pages, or an
    empty key; a page id or slot id held twice; a non-root tombstone leaf; a negative lock
    count; a state lock on a node without a slot; a KV lock count other than the node's own
    locks plus its children's KV lock counts (so ancestors are locked at least as much); a
    tick from the future; incremental counters that differ from the recomputed ones."""
    root = tree.root
    if root.parent is not None or root.key or root.page_ids or root.state_slot is not None:
        raise IntegrityError(f"malformed root {root}")
    if root.kv_locks or root.state_locks:
        raise IntegrityError(f"root holds locks: {root}")
    pages: set[int] = set()
    slots: set[int] = set()
    seen: set[int] = {id(root)}
    counts = {"evictable_pages": 0, "protected_pages": 0,
              "evictable_slots": 0, "protected_slots": 0}
    stack = [root]
    while stack:
        node = stack.pop()
        for dict_key, child in node.children.items():
            if id(child) in seen:
                raise IntegrityError(f"node reached twice (cycle or shared child): {child}")
            seen.add(id(child))
            if child.parent is not node:
                raise IntegrityError(f"child {child} does not point back to its parent {node}")
            if dict_key != child.key[:tree.page_size]:
                raise IntegrityError(f"child dict key {dict_key} is not the first page of "
                                     f"{child}")
            _check_node(tree, child, pages, slots, counts)
            stack.append(child)
    stats = tree.stats()
    recomputed = (counts["evictable_pages"] + counts["protected_pages"],
                  counts["evictable_slots"] + counts["protected_slots"],
                  counts["evictable_pages"], counts["protected_pages"],
                  counts["evictable_slots"], counts["protected_slots"])
    if tuple(stats) != recomputed:
        raise IntegrityError(f"counters {stats} != recomputed {recomputed}")


def _check_node(tree: HybridRadixCache, node: RadixNode, pages: set[int], slots: set[int],
                counts: dict[str, int]) -> None:
    if not node.page_ids or len(node.key) != tree.page_size * len(node.page_ids):
        raise IntegrityError(f"key of {len(node.key)} tokens vs {len(node.page_ids)} pages "
                             f"(page_size {tree.page_size}) in {node}")
    if len(set(node.page_ids)) < len(node.page_ids):
        raise IntegrityError(f"page id held twice within {node}")
    if twice := pages.intersection(node.page_ids):
        raise IntegrityError(f"page ids {sorted(twice)} held twice: {node}")
    pages.update(node.page_ids)
    if node.state_slot is not None:
        if node.state_slot in slots:
            raise IntegrityError(f"slot {node.state_slot} held twice: {node}")
        slots.add(node.state_slot)
        counts["protected_slots" if node.state_locks else "evictable_slots"] += 1
    elif not node.children:
        raise IntegrityError(f"non-root tombstone leaf {node}")
    if node.kv_locks < 0 or node.state_locks < 0:
        raise IntegrityError(f"negative lock count in {node}")
    if node.state_locks and node.state_slot is None:
        raise IntegrityError(f"state lock on a tombstone {node}")
    below = sum(child.kv_locks for child in node.children.values())
    if node.kv_locks != node.state_locks + below:
        raise IntegrityError(f"KV locks {node.kv_locks} != own {node.state_locks} + "
                             f"children's {below} in {node}")
    if node.tick > tree._tick:
        raise IntegrityError(f"tick {node.tick} ahead of the tree's {tree._tick}: {node}")
    counts["protected_pages" if node.kv_locks else "evictable_pages"] += len(node.page_ids)
