"""PageAllocator and StateSlotAllocator: one example test per contract sentence, plus a
hypothesis state machine per allocator checked against a naive model. Imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from qnext.worker.sched import cache
from qnext.worker.sched.cache import (
    IntegrityError,
    OutOfPages,
    OutOfSlots,
    PageAllocator,
    StateSlotAllocator,
)

KINDS = [(PageAllocator, OutOfPages), (StateSlotAllocator, OutOfSlots)]


@pytest.fixture(params=KINDS, ids=["pages", "states"])
def kind(request):
    return request.param


def test_id_zero_is_never_handed_out_and_fresh_order_is_ascending(kind):
    make, out_of = kind
    alloc = make(6)
    assert (alloc.num_total, alloc.num_free) == (5, 5)
    assert alloc.allocate(5) == [1, 2, 3, 4, 5]
    with pytest.raises(out_of):
        alloc.allocate(1)


def test_order_is_lifo(kind):
    make, _ = kind
    alloc = make(10)
    assert alloc.allocate(3) == [1, 2, 3]
    alloc.free([1, 3])
    assert alloc.allocate(2) == [3, 1]
    assert alloc.allocate(1) == [4]


def test_out_of_ids_allocates_nothing(kind):
    make, out_of = kind
    alloc = make(4)
    alloc.allocate(1)
    with pytest.raises(out_of, match="asked for 3"):
        alloc.allocate(3)
    assert alloc.num_free == 2
    assert alloc.allocate(2) == [2, 3]
    alloc.check_integrity()


def test_can_allocate_matches_allocate(kind):
    make, _ = kind
    alloc = make(4)
    assert alloc.can_allocate(0) and alloc.can_allocate(3)
    assert not alloc.can_allocate(4)
    assert alloc.allocate(0) == []
    for call in (alloc.allocate, alloc.can_allocate):
        with pytest.raises(ValueError, match="negative"):
            call(-1)


@pytest.mark.parametrize("case", ["twice-in-one-call", "freed-already", "never-allocated"])
def test_double_free_raises_and_frees_nothing(kind, case):
    make, _ = kind
    alloc = make(5)
    alloc.allocate(2)
    alloc.free([2])
    bad = {"twice-in-one-call": [1, 1], "freed-already": [1, 2], "never-allocated": [1, 4]}
    with pytest.raises(ValueError, match="double free"):
        alloc.free(bad[case])
    assert alloc.num_free == 3
    alloc.check_integrity()


@pytest.mark.parametrize("bad, match", [(0, "reserved"), (5, "out of range"),
                                        (6, "out of range"), (-1, "out of range")])
def test_free_id_zero_or_out_of_range_raises_and_frees_nothing(kind, bad, match):
    make, _ = kind
    alloc = make(5)
    alloc.allocate(2)
    with pytest.raises(ValueError, match=match):
        alloc.free([1, bad])
    assert alloc.num_free == 2
    alloc.free([1, 2])
    assert alloc.num_free == 4


def test_reset_frees_everything_in_fresh_order(kind):
    make, _ = kind
    alloc = make(5)
    alloc.allocate(3)
    alloc.free([2])
    alloc.reset()
    assert alloc.num_free == 4
    assert alloc.allocate(4) == [1, 2, 3, 4]
    alloc.check_integrity()


def test_only_reserved_id_means_nothing_to_allocate(kind):
    make, out_of = kind
    alloc = make(1)
    assert (alloc.num_total, alloc.num_free) == (0, 0)
    with pytest.raises(out_of):
        alloc.allocate(1)
    with pytest.raises(ValueError):
        make(0)


CORRUPTIONS = {
    "duplicate": lambda a, held: a._free.append(a._free[0]),
    "both": lambda a, held: a._free.append(held[0]),
    "lost": lambda a, held: a._held.discard(held[0]),
    "foreign": lambda a, held: a._held.add(99),
}


@pytest.mark.parametrize("corrupt", sorted(CORRUPTIONS))
def test_check_integrity_detects_corruption(kind, corrupt):
    make, _ = kind
    alloc = make(6)
    CORRUPTIONS[corrupt](alloc, alloc.allocate(2))
    with pytest.raises(IntegrityError):
        alloc.check_integrity()


def test_state_allocate_one():
    alloc = StateSlotAllocator(3)
    assert [alloc.allocate_one(), alloc.allocate_one()] == [1, 2]
    with pytest.raises(OutOfSlots):
        alloc.allocate_one()
    alloc.free([1])
    assert alloc.allocate_one() == 1


def test_package_reexports_and_error_types():
    assert set(cache.__all__) == {"HybridRadixCache", "IntegrityError", "OutOfPages",
                                  "OutOfSlots", "PageAllocator", "StateSlotAllocator"}
    assert all(hasattr(cache, name) for name in cache.__all__)
    assert issubclass(OutOfPages, RuntimeError) and issubclass(OutOfSlots, RuntimeError)
    assert issubclass(IntegrityError, RuntimeError)
    assert not issubclass(IntegrityError, AssertionError)


def test_allocators_import_no_torch():
    code = ("import sys, qnext.worker.sched, qnext.worker.sched.cache; "
            "assert 'torch' not in sys.modules, 'qnext.worker.sched imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


class _AllocatorMachine(RuleBasedStateMachine):
    """Random allocate / free / bad free / reset against a set model plus a LIFO stack."""

    make: type = PageAllocator
    out_of: type = OutOfPages

    def __init__(self) -> None:
        super().__init__()
        self.alloc = None
        self.stack: list[int] = []
        self.held: set[int] = set()

    @initialize(size=st.integers(1, 40))
    def create(self, size):
        self.size = size
        self.alloc = self.make(size)
        self.stack = list(range(size - 1, 0, -1))

    def _take(self, ids):
        expected = [self.stack.pop() for _ in range(len(ids))]
        assert ids == expected
        assert 0 not in ids and not set(ids) & self.held
        self.held |= set(ids)

    @rule(k=st.integers(0, 45))
    def allocate(self, k):
        if k > len(self.stack):
            with pytest.raises(self.out_of):
                self.alloc.allocate(k)
            return
        self._take(self.alloc.allocate(k))

    @rule(data=st.data())
    def free_subset(self, data):
        ids = data.draw(st.permutations(sorted(self.held)))
        ids = ids[:data.draw(st.integers(0, len(ids)))]
        self.alloc.free(ids)
        self.held -= set(ids)
        self.stack.extend(ids)

    @rule(data=st.data())
    def bad_free_changes_nothing(self, data):
        bad = [0, -1, self.size, self.size + 3, *self.stack]
        if self.held:
            bad.append(("dup", min(self.held)))
        pick = data.draw(st.sampled_from(bad))
        ids = [pick[1], pick[1]] if isinstance(pick, tuple) else [*sorted(self.held)[:1], pick]
        with pytest.raises(ValueError):
            self.alloc.free(ids)

    @rule()
    def reset(self):
        self.alloc.reset()
        self.stack = list(range(self.size - 1, 0, -1))
        self.held = set()

    @invariant()
    def consistent(self):
        if self.alloc is None:
            return
        self.alloc.check_integrity()
        assert self.alloc.num_free == len(self.stack)
        assert self.alloc.num_free + len(self.held) == self.alloc.num_total == self.size - 1
        assert self.alloc.can_allocate(len(self.stack))
        assert not self.alloc.can_allocate(len(self.stack) + 1)


class PageMachine(_AllocatorMachine):
    make = PageAllocator
    out_of = OutOfPages


class StateSlotMachine(_AllocatorMachine):
    make = StateSlotAllocator
    out_of = OutOfSlots

    @rule()
    def allocate_one(self):
        if not self.stack:
            with pytest.raises(OutOfSlots):
                self.alloc.allocate_one()
            return
        self._take([self.alloc.allocate_one()])


_SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestPageMachine = PageMachine.TestCase
TestPageMachine.settings = _SETTINGS
TestStateSlotMachine = StateSlotMachine.TestCase
TestStateSlotMachine.settings = _SETTINGS
