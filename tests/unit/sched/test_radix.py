"""HybridRadixCache: one example test per contract sentence, plus a hypothesis state machine
checked against a naive dict-of-prefixes model with check_integrity() after every rule.
Imports no torch."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from qnext.worker.sched.cache.ids import IntegrityError
from qnext.worker.sched.cache.radix import HybridRadixCache


def test_match_on_emptyHybridRadixCache():
    t = HybridRadixCache(4)
    m = t.match([1, 2, 3, 4, 5])
    assert tuple(m) == (0, [], t.root, None, 0)
    t.check_integrity()


@pytest.mark.parametrize("page_size", [1, 4])
def test_exact_partial_and_over_long_matches(page_size):
    t = HybridRadixCache(page_size)
    toks = list(range(3 * page_size))
    t.insert(toks, [7, 8, 9], state_slot=1)
    assert t.match(toks)[:2] == (3 * page_size, [7, 8, 9])
    assert t.match(toks + [99] * (page_size + 1))[:2] == (3 * page_size, [7, 8, 9])
    partial = t.match(toks[:2 * page_size] + [99] * page_size)
    assert (partial.num_tokens, partial.kv_num_tokens) == (0, 2 * page_size)
    assert t.match(toks[:-1])[::4] == (0, page_size * 2)  # only whole pages match
    t.check_integrity()


def test_split_makes_a_tombstone_upper_part_and_keeps_the_lower_slot():
    t = HybridRadixCache(2)
    leaf = t.insert(range(6), [1, 2, 3], state_slot=9).node
    m = t.match([0, 1, 2, 3, 42, 42])
    upper = leaf.parent
    assert upper is not t.root and upper.state_slot is None and upper.page_ids == [1, 2]
    assert leaf.state_slot == 9 and leaf.page_ids == [3] and leaf.key == (4, 5)
    assert (m.num_tokens, m.kv_num_tokens, m.node) == (0, 4, t.root)
    t.check_integrity()


def test_usable_prefix_stops_at_deepest_stateful_node_kv_goes_further():
    t = HybridRadixCache(1)
    t.insert([1, 2], [10, 11], state_slot=5)
    t.insert([1, 2, 3, 4], [10, 11, 12, 13], state_slot=6)
    t.evict_slots(1)  # [1, 2] is the LRU stateful node: internal, so a tombstone
    m = t.match([1, 2, 3, 4])
    assert (m.num_tokens, m.state_slot, m.kv_num_tokens) == (4, 6, 4)
    t.insert([1, 2, 3, 4, 5], [1, 2, 3, 4, 14], state_slot=7)
    t.evict_slots(1)  # now [1, 2, 3, 4] is the LRU stateful node: loses its slot
    m = t.match([1, 2, 3, 4, 9])
    assert (m.num_tokens, m.page_ids, m.kv_num_tokens) == (0, [], 4)
    t.check_integrity()


def test_insert_reports_duplicates_and_slot_conflict():
    t = HybridRadixCache(2)
    t.insert(range(4), [1, 2], state_slot=1)
    ins = t.insert(range(6), [5, 6, 3], state_slot=2)
    assert (ins.num_cached_tokens, ins.duplicate_page_ids, ins.state_slot_used) == (
        4, [5, 6], True)
    again = t.insert(range(4), [7, 8], state_slot=3)
    assert (again.duplicate_page_ids, again.state_slot_used, again.node.state_slot) == (
        [7, 8], False, 1)
    assert t.stats()[:2] == (3, 2)
    t.check_integrity()


def test_insert_at_tombstone_attaches_the_slot_and_new_tokens_need_a_slot():
    t = HybridRadixCache(1)
    t.insert([1, 2, 3], [1, 2, 3], state_slot=1)
    t.match([1, 2, 9])  # splits: [1, 2] becomes a tombstone
    ins = t.insert([1, 2], [4, 5], state_slot=2)
    assert ins.state_slot_used and ins.node.state_slot == 2 and ins.duplicate_page_ids == [4, 5]
    assert t.match([1, 2]).num_tokens == 2
    with pytest.raises(ValueError, match="state slot"):
        t.insert([1, 2, 7], [4, 5, 6])
    assert t.insert([1, 2, 3], [4, 5, 6]).duplicate_page_ids == [4, 5, 6]
    with pytest.raises(ValueError, match="page_size"):
        t.insert([1, 2], [4])


def test_locks_protect_from_both_evictions():
    t = HybridRadixCache(1)
    node = t.insert([1, 2], [1, 2], state_slot=1).node
    t.insert([1, 3], [1, 3], state_slot=2)
    t.lock(node)
    t.lock(node)
    assert t.stats() == (3, 2, 1, 2, 1, 1)
    out = t.evict_pages(100)
    assert (out.page_ids, out.state_slots) == ([3], [2])
    assert t.evict_slots(100) == ([], [])
    t.unlock(node)
    assert t.evict_pages(1) == ([], [])
    t.unlock(node)
    with pytest.raises(ValueError):
        t.unlock(node)
    assert sorted(t.evict_pages(1).page_ids) == [1, 2]
    assert t.stats() == (0, 0, 0, 0, 0, 0) and not t.root.children
    with pytest.raises(ValueError):
        t.lock(node)  # evicted
    t.check_integrity()


def test_evict_slots_on_internal_node_leaves_a_tombstone_with_its_pages():
    t = HybridRadixCache(1)
    mid = t.insert([1, 2], [1, 2], state_slot=1).node
    t.insert([1, 2, 3], [1, 2, 3], state_slot=2)
    out = t.evict_slots(1)
    assert out == ([], [1]) and mid.state_slot is None and mid.page_ids == [1, 2]
    assert t.stats()[:2] == (3, 1)
    with pytest.raises(ValueError, match="tombstone"):
        t.lock(mid)
    t.check_integrity()


def test_leaf_eviction_cascades_through_childless_tombstones():
    t = HybridRadixCache(1)
    t.insert([1, 2, 3], [1, 2, 3], state_slot=1)
    t.insert([1, 2, 4], [1, 2, 4], state_slot=2)  # [1, 2] is a tombstone now
    t.match([1, 2, 4])
    out = t.evict_pages(1)
    assert (out.page_ids, out.state_slots) == ([3], [1])
    out = t.evict_slots(1)  # the leaf goes, and its tombstone parent with it
    assert (sorted(out.page_ids), out.state_slots) == ([1, 2, 4], [2])
    assert not t.root.children
    assert t.evict_pages(0) == ([], []) and t.evict_slots(0) == ([], [])
    t.check_integrity()


def test_reset_forgets_everything():
    t = HybridRadixCache(2)
    t.lock(t.insert(range(4), [1, 2], state_slot=1).node)
    t.reset()
    assert t.stats() == (0,) * 6 and not t.root.children
    t.check_integrity()


CORRUPTIONS = {
    "dup_page": lambda t, a, b: setattr(b, "page_ids", [1]),
    "tombstone_leaf": lambda t, a, b: (setattr(b, "state_slot", None),
                                       setattr(t, "_evictable_slots", 1)),
    "key_len": lambda t, a, b: setattr(a, "key", (1,)),
    "lock": lambda t, a, b: setattr(a, "kv_locks", 1),
    "counter": lambda t, a, b: setattr(t, "_protected_pages", 1),
    "parent": lambda t, a, b: setattr(b, "parent", a),
    "dict_key": lambda t, a, b: t.root.children.__setitem__((9,), t.root.children.pop((3,))),
}


@pytest.mark.parametrize("corrupt", sorted(CORRUPTIONS))
def test_check_integrity_is_real(corrupt):
    t = HybridRadixCache(1)
    a = t.insert([1, 2], [1, 2], state_slot=1).node
    b = t.insert([3], [3], state_slot=2).node
    t.check_integrity()
    CORRUPTIONS[corrupt](t, a, b)
    with pytest.raises(IntegrityError):
        t.check_integrity()


def test_radix_imports_no_torch():
    code = ("import sys, qnext.worker.sched.cache.radix; "
            "assert 'torch' not in sys.modules, 'radix imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


class RadixMachine(RuleBasedStateMachine):
    """Model: `kv` maps every cached page-aligned prefix to the page id of its last page,
    `state` maps stateful prefixes to their slot."""

    @initialize(page_size=st.sampled_from([1, 2, 3]))
    def setup(self, page_size):
        self.ps = page_size
        self.tree = HybridRadixCache(page_size)
        self.kv: dict[tuple[int, ...], int] = {}
        self.state: dict[tuple[int, ...], int] = {}
        self.ids = itertools.count(1)
        self.adopted_pages: set[int] = set()
        self.adopted_slots: set[int] = set()
        self.returned_pages: list[int] = []
        self.returned_slots: list[int] = []
        self.locks: list[tuple[object, tuple[int, ...]]] = []
        self.seen: list[tuple[int, ...]] = []

    def _tokens(self, data) -> tuple[int, ...]:
        base = data.draw(st.sampled_from(self.seen)) if self.seen else ()
        base = base[:data.draw(st.integers(0, len(base)))]
        n = data.draw(st.integers(0, 2)) * self.ps + data.draw(st.integers(0, self.ps - 1))
        return base + tuple(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))

    @rule(data=st.data(), with_slot=st.sampled_from([True, True, False]))
    def insert(self, data, with_slot):
        toks = self._tokens(data)
        toks = toks[:len(toks) - len(toks) % self.ps]
        pages = [next(self.ids) for _ in range(len(toks) // self.ps)]
        slot = next(self.ids) if with_slot else None
        prefixes = [toks[:(i + 1) * self.ps] for i in range(len(pages))]
        cached = [p for p in prefixes if p in self.kv]
        if slot is None and len(cached) < len(prefixes):
            with pytest.raises(ValueError):
                self.tree.insert(toks, pages, slot)
            return
        ins = self.tree.insert(toks, pages, slot)
        self.seen.append(toks)
        assert ins.num_cached_tokens == len(cached) * self.ps
        assert ins.duplicate_page_ids == pages[:len(cached)]
        for prefix, page in zip(prefixes[len(cached):], pages[len(cached):]):
            self.kv[prefix] = page
            self.adopted_pages.add(page)
        expect_used = slot is not None and bool(toks) and toks not in self.state
        assert ins.state_slot_used == expect_used
        if expect_used:
            self.state[toks] = slot
            self.adopted_slots.add(slot)

    @rule(data=st.data(), lock=st.booleans())
    def match(self, data, lock):
        toks = self._tokens(data)
        m = self.tree.match(toks)
        full = [toks[:i * self.ps] for i in range(1, len(toks) // self.ps + 1)]
        kv_len = next((i for i, p in enumerate(full) if p not in self.kv), len(full))
        usable = max((i + 1 for i in range(kv_len) if full[i] in self.state), default=0)
        assert m.kv_num_tokens == kv_len * self.ps
        assert m.num_tokens == usable * self.ps
        assert m.page_ids == [self.kv[p] for p in full[:usable]]
        assert m.state_slot == (self.state[full[usable - 1]] if usable else None)
        if lock:
            self.tree.lock(m.node)
            self.locks.append((m.node, toks[:usable * self.ps]))

    @precondition(lambda self: self.locks)
    @rule(data=st.data())
    def unlock(self, data):
        node, _ = self.locks.pop(data.draw(st.integers(0, len(self.locks) - 1)))
        self.tree.unlock(node)

    def _evicted(self, out, asked_pages, asked_slots):
        stats = self.tree.stats()
        assert len(out.page_ids) >= asked_pages or stats.evictable_pages == 0
        assert len(out.state_slots) >= asked_slots or stats.evictable_slots == 0
        gone = set(out.page_ids)
        assert len(gone) == len(out.page_ids)
        assert len(set(out.state_slots)) == len(out.state_slots)
        held_pages = {page: p for p, page in self.kv.items()}
        assert gone <= held_pages.keys(), "pages not held by the tree"
        for page in gone:
            del self.kv[held_pages[page]]
        slots = set(out.state_slots)
        held_slots = {s: p for p, s in self.state.items()}
        assert slots <= held_slots.keys(), "slots not held by the tree"
        for s in slots:
            del self.state[held_slots[s]]
        assert all(p in self.kv for p in self.state)
        assert all(p[:-self.ps] in self.kv for p in self.kv if len(p) > self.ps)
        for _, prefix in self.locks:
            assert not prefix or prefix in self.state, "locked node evicted"
        self.returned_pages += out.page_ids
        self.returned_slots += out.state_slots

    @rule(pages=st.booleans(), n=st.integers(0, 4))
    def evict(self, pages, n):
        if pages:
            self._evicted(self.tree.evict_pages(n), n, 0)
        else:
            self._evicted(self.tree.evict_slots(n), 0, n)

    @invariant()
    def integrity(self):
        if hasattr(self, "tree"):
            self.tree.check_integrity()
            assert self.tree.stats()[:2] == (len(self.kv), len(self.state))

    def teardown(self):
        if not hasattr(self, "tree"):
            return
        for node, _ in self.locks:
            self.tree.unlock(node)
        self.locks = []
        self._evicted(self.tree.evict_pages(10**9), 10**9, 0)
        self.tree.check_integrity()
        assert not self.tree.root.children and self.tree.stats() == (0,) * 6
        assert sorted(self.returned_pages) == sorted(self.adopted_pages)
        assert sorted(self.returned_slots) == sorted(self.adopted_slots)


TestRadixMachine = RadixMachine.TestCase
TestRadixMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
