"""`HybridRadixCache`: the prefix index of a hybrid (linear-attention + full-attention) model.
Pure Python, ints only; must not import torch.

Each non-root node owns a page-aligned run of token ids (`key`, a tuple with
len(key) == page_size * len(page_ids)), the KV page ids of those tokens, and optionally a
`state_slot` holding the recurrent state after the node's last token. A node without a slot
is a tombstone: its KV is shareable but a request cannot resume from its end.

Invariants (verified by `check_integrity`):
- non-root leaves are never tombstones; the root has no key, pages or slot and is never evicted;
- children are keyed by their first page, as a tuple of token ids;
- splitting a node makes the new upper part a tombstone (state cannot be split);
- a node's KV lock count is its own locks plus its children's KV lock counts, so a KV lock
  covers the node and all its ancestors; a state lock covers only the node and needs a slot.

LRU: a logical `tick` owned by the tree stamps every node touched by `match` / `insert`, root
to leaf, so children on a touched path are more recent than their parents. Eviction builds a
heap of the current candidates (unlocked leaves, or unlocked stateful nodes) per call: O(n)
to scan the tree plus O(log n) per evicted node, not an intrusive LRU list.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence

from qnext.worker.sched.cache.ids import IntegrityError
from qnext.worker.sched.cache.radix_node import CacheStats, Evicted, Insert, Match, RadixNode

__all__ = ["CacheStats", "Evicted", "HybridRadixCache", "Insert", "IntegrityError", "Match",
           "RadixNode"]


class HybridRadixCache:
    """Prefix index over KV page ids plus recurrent-state slots; see the module docstring."""

    def __init__(self, page_size: int) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self.reset()

    def reset(self) -> None:
        """Forget every node and lock. Returns no ids: the caller resets its allocators too."""
        self._uids = itertools.count()
        self._tick = 0
        self.root = RadixNode((), [], None, None, 0, next(self._uids))
        self._evictable_pages = self._protected_pages = 0
        self._evictable_slots = self._protected_slots = 0

    # ---- lookup and insert ---------------------------------------------------------------

    def match(self, token_ids: Sequence[int]) -> Match:
        """Longest usable cached prefix of `token_ids`. Only whole pages match; a trailing
        partial page is ignored. The usable prefix ends at the deepest matched node that has
        a state slot (the root, 0 tokens, if none); `kv_num_tokens` counts every matched
        token, including KV beyond that node that is only shareable, not resumable. A match
        ending inside a node splits it at the page boundary (upper part a tombstone). The
        matched path becomes most recent (children more recent than parents). Frees nothing.
        """
        path, kv_num_tokens = self._walk(tuple(token_ids), split=True)
        self._touch(path)
        best, num_pages, pages = self.root, 0, []
        for node in path:
            pages.extend(node.page_ids)
            if node.state_slot is not None:
                best, num_pages = node, len(pages)
        return Match(num_pages * self.page_size, pages[:num_pages], best, best.state_slot,
                     kv_num_tokens)

    def insert(self, token_ids: Sequence[int], page_ids: Sequence[int],
               state_slot: int | None = None) -> Insert:
        """Insert a page-aligned prefix (len(token_ids) == page_size * len(page_ids)).
        Pages of tokens already in the tree are not adopted: they come back as
        `duplicate_page_ids` for the caller to free. `state_slot`, if given, is attached to
        the node ending exactly at the end of `token_ids` (an existing tombstone included)
        unless that node already has a slot or is the root (empty insert): then
        `state_slot_used` is False and the caller frees its slot. New tokens need a slot
        (a new leaf may not be a tombstone): raises ValueError, tree unchanged, when
        `state_slot` is None and the tokens are not all cached yet. The path becomes most
        recent.
        """
        tokens, pages = tuple(token_ids), list(page_ids)
        if len(tokens) != self.page_size * len(pages):
            raise ValueError(f"{len(tokens)} tokens is not page_size {self.page_size} "
                             f"* {len(pages)} pages")
        if state_slot is None and self._walk(tokens, split=False)[1] < len(tokens):
            raise ValueError("inserting new tokens needs a state slot (no tombstone leaves)")
        path, num_cached = self._walk(tokens, split=True)
        duplicates = pages[:num_cached // self.page_size]
        node = path[-1] if path else self.root
        used = False
        if num_cached < len(tokens):
            node = self._add_leaf(node, tokens[num_cached:],
                                  pages[len(duplicates):], state_slot)
            path.append(node)
            used = True
        elif state_slot is not None and node is not self.root and node.state_slot is None:
            node.state_slot, used = state_slot, True
            self._add_slot_count(node, 1)
        self._touch(path)
        return Insert(num_cached, duplicates, used, node)

    def path_page_ids(self, node: RadixNode) -> list[int]:
        """KV page ids of every token from the root to the end of `node`, in order."""
        runs = []
        while node is not self.root:
            runs.append(node.page_ids)
            assert node.parent is not None, "node is not in the tree"
            node = node.parent
        return [page for run in reversed(runs) for page in run]

    # ---- locks ---------------------------------------------------------------------------

    def lock(self, node: RadixNode) -> None:
        """Protect `node`: its slot (state lock) and the KV of it and all its ancestors (KV
        lock); counted per node, so each lock needs one `unlock`. Locking the root is a no-op
        (it is never evicted). Raises ValueError on a tombstone or a node no longer in the
        tree: lock what `match` or `insert` returned before anything was evicted."""
        if node is self.root:
            return
        if node.state_slot is None or not self._in_tree(node):
            raise ValueError(f"cannot lock a tombstone or evicted node: {node}")
        self._add_slot_count(node, -1)
        node.state_locks += 1
        self._add_slot_count(node, 1)
        self._add_kv_locks(node, 1)

    def unlock(self, node: RadixNode) -> None:
        """Undo one `lock(node)`; raises ValueError if `node` holds no lock."""
        if node is self.root:
            return
        if node.state_locks == 0:
            raise ValueError(f"unlock without lock: {node}")
        self._add_slot_count(node, -1)
        node.state_locks -= 1
        self._add_slot_count(node, 1)
        self._add_kv_locks(node, -1)

    # ---- eviction ------------------------------------------------------------------------

    def evict_pages(self, num_pages: int) -> Evicted:
        """Free at least `num_pages` pages, or all evictable ones if fewer: repeatedly remove
        the least recently used unlocked leaf (its pages and its slot), then its parents that
        became childless unlocked tombstones. Whole nodes only, so it may free more than
        asked; 0 is a no-op."""
        out = Evicted([], [])
        heap = [(n.tick, n.uid, n) for n in self._nodes()
                if not n.children and n.kv_locks == 0 and n is not self.root]
        heapq.heapify(heap)
        while heap and len(out.page_ids) < num_pages:
            parent = self._remove_leaf(heapq.heappop(heap)[2], out)
            if parent is not self.root and not parent.children and parent.kv_locks == 0:
                heapq.heappush(heap, (parent.tick, parent.uid, parent))
        return out

    def evict_slots(self, num_slots: int) -> Evicted:
        """Free at least `num_slots` slots, or all evictable ones if fewer: repeatedly take
        the least recently used node with an unlocked slot. An internal node only loses its
        slot (becomes a tombstone, keeps its KV); a leaf is removed with its pages, then its
        parents that became childless unlocked tombstones. 0 is a no-op."""
        out = Evicted([], [])
        heap = [(n.tick, n.uid, n) for n in self._nodes()
                if n.state_slot is not None and n.state_locks == 0]
        heapq.heapify(heap)
        while heap and len(out.state_slots) < num_slots:
            node = heapq.heappop(heap)[2]
            if node.children:
                self._add_slot_count(node, -1)
                out.state_slots.append(node.state_slot)
                node.state_slot = None
            else:
                self._remove_leaf(node, out)
        return out

    # ---- accounting ----------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """Current counts, kept incrementally (O(1))."""
        return CacheStats(self._evictable_pages + self._protected_pages,
                          self._evictable_slots + self._protected_slots,
                          self._evictable_pages, self._protected_pages,
                          self._evictable_slots, self._protected_slots)

    def check_integrity(self) -> None:
        """Recompute everything from scratch; raise IntegrityError on any inconsistency (see
        `radix_check.check_tree` for the list)."""
        from qnext.worker.sched.cache.radix_check import check_tree
        check_tree(self)

    # ---- internals -----------------------------------------------------------------------

    def _nodes(self) -> Iterator[RadixNode]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def _walk(self, tokens: tuple[int, ...], split: bool) -> tuple[list[RadixNode], int]:
        """Matched path below the root and the matched token count (whole pages). With
        `split`, a node matched partially is split so the path ends on a node boundary;
        without, the partial pages are counted but the path is not meaningful past them."""
        ps, node, pos, path = self.page_size, self.root, 0, []
        end = len(tokens) - len(tokens) % ps
        while pos < end:
            child = node.children.get(tokens[pos:pos + ps])
            if child is None:
                break
            key, i, n = child.key, ps, min(len(child.key), end - pos)
            while i < n and key[i] == tokens[pos + i]:
                i += 1
            if i < len(key):
                i -= i % ps
                if not split:
                    return path, pos + i
                child = self._split(child, i // ps)
            path.append(child)
            pos += len(child.key)
            node = child
        return path, pos

    def _split(self, node: RadixNode, num_pages: int) -> RadixNode:
        """Cut `node` after `num_pages` pages; the new upper part is a tombstone with the
        same KV lock count; `node` keeps the rest, its slot, locks and identity."""
        ps, parent = self.page_size, node.parent
        assert parent is not None and 0 < num_pages < len(node.page_ids)
        upper = RadixNode(node.key[:num_pages * ps], node.page_ids[:num_pages], None, parent,
                          node.tick, next(self._uids))
        upper.kv_locks = node.kv_locks
        node.key, node.page_ids = node.key[num_pages * ps:], node.page_ids[num_pages:]
        node.parent = upper
        upper.children[node.key[:ps]] = node
        parent.children[upper.key[:ps]] = upper
        return upper

    def _add_leaf(self, parent: RadixNode, key: tuple[int, ...], page_ids: list[int],
                  state_slot: int | None) -> RadixNode:
        leaf = RadixNode(key, page_ids, state_slot, parent, self._tick, next(self._uids))
        parent.children[key[:self.page_size]] = leaf
        self._evictable_pages += len(page_ids)
        self._add_slot_count(leaf, 1)
        return leaf

    def _remove_leaf(self, leaf: RadixNode, out: Evicted) -> RadixNode:
        """Remove an unlocked leaf and the childless unlocked tombstones above it, adding
        their ids to `out`; return the first surviving ancestor."""
        node = leaf
        while True:
            parent = node.parent
            assert parent is not None and not node.children and node.kv_locks == 0
            del parent.children[node.key[:self.page_size]]
            node.parent = None
            self._evictable_pages -= len(node.page_ids)
            out.page_ids.extend(node.page_ids)
            if node.state_slot is not None:
                self._add_slot_count(node, -1)
                out.state_slots.append(node.state_slot)
            node = parent
            if (node is self.root or node.children or node.state_slot is not None
                    or node.kv_locks):
                return node

    def _add_slot_count(self, node: RadixNode, sign: int) -> None:
        """Add (sign=1) or remove (sign=-1) `node`'s slot, if any, to/from the counters."""
        if node.state_slot is None:
            return
        if node.state_locks:
            self._protected_slots += sign
        else:
            self._evictable_slots += sign

    def _add_kv_locks(self, node: RadixNode, delta: int) -> None:
        while node is not self.root:
            was_locked = node.kv_locks > 0
            node.kv_locks += delta
            if was_locked != (node.kv_locks > 0):
                moved = len(node.page_ids) if delta > 0 else -len(node.page_ids)
                self._evictable_pages -= moved
                self._protected_pages += moved
            assert node.parent is not None
            node = node.parent

    def _in_tree(self, node: RadixNode) -> bool:
        while node.parent is not None:
            node = node.parent
        return node is self.root

    def _touch(self, path: list[RadixNode]) -> None:
        for node in path:
            self._tick += 1
            node.tick = self._tick
