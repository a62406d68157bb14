"""How rank 0 hands each command (a step's plan, a pool change, "stop") to its followers.

On one node: a ring of slots in a shared-memory file plus two semaphores per follower — one
counts the messages it has not read, one the slots it has freed. Rank 0 pickles a command
once, waits until every follower has freed the slot (it runs ahead by up to `SLOTS` commands),
copies it in and signals each follower; a follower waits on its semaphore (no spinning, so
idle followers cost no CPU), copies the bytes out and frees the slot. The semaphores order
the memory accesses (they are full barriers), so no other fence is needed.

Why: the gloo `broadcast_object_list` it replaces cost rank 0 about 1.4 ms of host time a
decode step on 4 x H200 (two gloo broadcasts, profiled) and tied rank 0 to the slowest
follower's loop, while the batch-1 step's device time is about 2.5 ms; the overlap loop hides
host work only while it is shorter than the device's. A command larger than a slot (a
prefill plan of very many tokens) goes over gloo: its slot then holds a marker that tells the
followers to join that broadcast. Followers on other nodes (`--nnodes` > 1) cannot see the
file, so multi-node groups keep gloo for every command (`tp.py` decides).
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
import tempfile
from dataclasses import dataclass

SLOTS = 4  # commands rank 0 may run ahead of its slowest follower
CAPACITY = 1 << 20  # bytes a slot holds (a decode plan of 256 sequences: about 10 KB)
_LEN = struct.Struct("<q")  # a slot's header: payload bytes, or OVER_GLOO
OVER_GLOO = -1


@dataclass
class RingSpec:
    """What a follower needs to open the ring (picklable while spawning)."""

    path: str
    slots: int
    capacity: int
    unread: list  # per follower: multiprocessing semaphores
    free: list


class _Ring:
    def __init__(self, spec: RingSpec) -> None:
        self.spec, self.count = spec, 0
        with open(spec.path, "r+b") as f:
            self.buf = mmap.mmap(f.fileno(), spec.slots * (_LEN.size + spec.capacity))

    def _offset(self) -> int:
        return (self.count % self.spec.slots) * (_LEN.size + self.spec.capacity)

    def close(self) -> None:
        self.buf.close()


class RingWriter(_Ring):
    """Rank 0's end: `put(command)`; returns False when the command must go over gloo."""

    @classmethod
    def create(cls, ctx, followers: int, slots: int = SLOTS,
               capacity: int = CAPACITY) -> RingWriter:
        """A new ring file (in /dev/shm where there is one) for `followers` readers; `ctx`:
        the multiprocessing context that will spawn them."""
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="qnext-ring-", dir=shm)
        os.ftruncate(fd, slots * (_LEN.size + capacity))
        os.close(fd)
        return cls(RingSpec(path, slots, capacity, [ctx.Semaphore(0) for _ in range(followers)],
                            [ctx.Semaphore(slots) for _ in range(followers)]))

    def put(self, command) -> bool:
        data = pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL)
        fits = len(data) <= self.spec.capacity
        for free in self.spec.free:
            free.acquire()
        at = self._offset()
        _LEN.pack_into(self.buf, at, len(data) if fits else OVER_GLOO)
        if fits:
            self.buf[at + _LEN.size:at + _LEN.size + len(data)] = data
        self.count += 1
        for unread in self.spec.unread:
            unread.release()
        return fits

    def unlink(self) -> None:
        """Remove the file (mappings stay valid): once every follower has opened it, so that
        nothing is left behind however the processes end."""
        try:
            os.unlink(self.spec.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        super().close()
        self.unlink()


class RingReader(_Ring):
    """Follower `index`'s end: `get()` blocks for the next command; None: it comes over
    gloo."""

    def __init__(self, spec: RingSpec, index: int) -> None:
        super().__init__(spec)
        self.unread, self.free = spec.unread[index], spec.free[index]

    def get(self):
        self.unread.acquire()
        at = self._offset()
        (size,) = _LEN.unpack_from(self.buf, at)
        data = None if size == OVER_GLOO else bytes(self.buf[at + _LEN.size:at + _LEN.size
                                                             + size])
        self.count += 1
        self.free.release()
        return None if data is None else pickle.loads(data)
