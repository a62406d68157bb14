"""`PrefixCache`: the scheduler's side of hybrid prefix caching — which pages and state slots a
sequence holds, what it reuses from the radix tree at admission, and what it gives back to
the tree. Pure Python, ints only; must not import torch.

Strategies (`SchedulerLimits.strategy`, SGLang's `--mamba-scheduler-strategy`):
- "off": no tree; a sequence holds a working slot and its pages, freed at the end.
- "no_buffer": page size 1, either loop. At a chunk boundary the working slot is copied into a
  new slot (a `copy_slots` entry of the next plan, before its forward) and inserted at the
  computed length; at the end the working slot itself is donated with every computed token
  (the scheduler releases a sequence only when no step in flight references it, so under the
  overlap loop the slot holds exactly `num_computed` tokens' state).
- "extra_buffer": each sequence owns `num_track_slots` ping-pong slots the forward writes
  snapshots into (`SeqWork.snapshot_*`): in prefill at multiples of `chunk` = max(64, page
  size) or at the branching position a match reported, in decode every `track_interval`
  tokens. Before each step of the sequence a new snapshot is donated to the tree (its slot
  replaced by a fresh one), so a prompt is cached as soon as it is computed; at the end the
  tokens up to the newest snapshot are inserted. Non-final prefill chunks end on multiples of
  `chunk`, so every cached position is aligned.

A hit is copied into the sequence's own working slot (copy-on-write), so tree slots are never
written after insertion; the sequence locks the deepest node it uses until it is released.
"""

from __future__ import annotations

from dataclasses import dataclass

from qnext.worker.sched.cache import HybridRadixCache, PageAllocator, StateSlotAllocator
from qnext.worker.sched.cache.radix_node import Evicted
from qnext.worker.sched.request import Sequence

SNAPSHOT_CHUNK = 64  # the chunked delta rule's chunk: snapshots come from its boundaries


@dataclass
class CacheCounters:
    prompt_tokens: int = 0  # tokens of admitted sequences (each admission)
    cached_tokens: int = 0  # of those, reused from the tree
    evicted_pages: int = 0
    evicted_slots: int = 0
    inserted_tokens: int = 0


class PrefixCache:
    def __init__(self, strategy: str, pages: PageAllocator, slots: StateSlotAllocator,
                 page_size: int, track_interval: int = 256, num_track_slots: int = 1,
                 snapshot_chunk: int = SNAPSHOT_CHUNK) -> None:
        self.strategy, self.pages, self.slots = strategy, pages, slots
        self.page_size, self.track_interval = page_size, track_interval
        self.chunk = max(snapshot_chunk, page_size)
        self.num_track_slots = num_track_slots if strategy == "extra_buffer" else 0
        self.tree = HybridRadixCache(page_size) if strategy != "off" else None
        self.counters = CacheCounters()

    # -- resources ------------------------------------------------------------------------
    @property
    def evictable_pages(self) -> int:
        return self.tree.stats().evictable_pages if self.tree else 0

    def evict_pages(self, num_pages: int) -> bool:
        """Free at least `num_pages` pages from the tree; False if none could be freed."""
        return self.tree is not None and self._returned(self.tree.evict_pages(num_pages)) > 0

    def ensure_free_slots(self, num_slots: int) -> bool:
        """Evict tree states until `num_slots` slots are free; False if that is impossible."""
        short = num_slots - self.slots.num_free
        if short > 0 and self.tree is not None:
            self._returned(self.tree.evict_slots(short))
        return self.slots.num_free >= num_slots

    def _returned(self, out: Evicted) -> int:
        if out.page_ids:
            self.pages.free(out.page_ids)
        if out.state_slots:
            self.slots.free(out.state_slots)
        self.counters.evicted_pages += len(out.page_ids)
        self.counters.evicted_slots += len(out.state_slots)
        return len(out.page_ids) + len(out.state_slots)

    # -- admission ------------------------------------------------------------------------
    def match(self, seq: Sequence) -> int:
        """Reuse the longest usable cached prefix of `seq` (all but its last token): lock it,
        point `seq.page_ids` at its pages and set `cached_len`; returns its length. Undo with
        `release(seq, cache=False)` if the sequence is then not admitted."""
        if self.tree is None:
            return 0
        m = self.tree.match(seq.all_ids[:seq.num_tokens - 1])
        self.tree.lock(m.node)
        seq.cache_node, seq.cached_len, seq.page_ids = m.node, m.num_tokens, list(m.page_ids)
        seq.pages_sent = 0
        branch = m.kv_num_tokens // self.chunk * self.chunk
        if self.strategy == "extra_buffer" and branch > m.num_tokens:
            seq.branch_len = branch
        return m.num_tokens

    @property
    def slots_per_admission(self) -> int:
        return 1 + self.num_track_slots

    def admit(self, seq: Sequence, zero_slots: list[int],
              copies: list[tuple[int, int]]) -> None:
        """Give an admitted `seq` its working (and track) slots; its state starts from the
        matched node's (a copy) or from zeros. Slots must be free (`ensure_free_slots`)."""
        seq.state_slot = self.slots.allocate_one()
        seq.track_slots = self.slots.allocate(self.num_track_slots)
        seq.num_computed = seq.num_cached_tokens = seq.cached_len
        seq.fresh = True
        self.counters.prompt_tokens += seq.num_tokens
        self.counters.cached_tokens += seq.cached_len
        src = getattr(seq.cache_node, "state_slot", None) if seq.cached_len else None
        if src is None:
            zero_slots.append(seq.state_slot)
        else:
            copies.append((src, seq.state_slot))

    # -- while running --------------------------------------------------------------------
    def chunk_end(self, seq: Sequence, start: int, size: int) -> int:
        """Largest allowed size <= `size` of a prefill chunk from `start`: extra_buffer ends
        non-final chunks on multiples of `chunk` (0 if none fits)."""
        if self.strategy != "extra_buffer" or start + size >= seq.num_tokens:
            return size
        return max((start + size) // self.chunk * self.chunk - start, 0)

    def snapshot(self, seq: Sequence, start: int, end: int,
                 decode: bool) -> tuple[int | None, int]:
        """(slot, length) of the snapshot the forward of tokens [start, end) must write, or
        (None, 0): extra_buffer only, at most one per step."""
        if self.strategy != "extra_buffer":
            return None, 0
        if decode:  # the last track boundary in (start, end]: one token, or a verify's range
            at = end // self.track_interval * self.track_interval
        elif start < seq.branch_len <= end:
            at = seq.branch_len
        else:
            at = end // self.chunk * self.chunk
        if at <= start:
            return None, 0
        slot = seq.track_slots[seq.track_idx]
        seq.track_idx = (seq.track_idx + 1) % len(seq.track_slots)
        seq.track_len, seq.track_slot = at, slot
        return slot, at

    def cache_chunk(self, seq: Sequence, copies: list[tuple[int, int]]) -> None:
        """Before `seq`'s next prefill chunk is planned: insert what its previous chunks
        computed (no_buffer: a copy of the working slot; extra_buffer: the newest snapshot,
        donated) and move the sequence's lock there. Best effort: skipped without a slot."""
        if self.strategy == "no_buffer" and seq.num_computed > seq.cached_len:
            if self.ensure_free_slots(1):
                slot = self.slots.allocate_one()
                if self._insert(seq, seq.num_computed, slot, keep_lock=True):
                    copies.append((seq.state_slot, slot))
                else:
                    self.slots.free([slot])
        else:
            self.publish_snapshot(seq)

    def publish_snapshot(self, seq: Sequence) -> None:
        """extra_buffer: donate `seq`'s newest snapshot to the tree (its track slot is
        replaced by a fresh one) and move its lock there. Called before each chunk and each
        decode, so a prompt is cached as soon as it is computed — concurrent requests sharing
        it hit (or learn its branching point) without waiting for it to finish. The snapshot
        may still be in flight: every later reader of the slot runs after it on the stream;
        a verify's (`track_plans`) waits until its accepted count says it was taken."""
        if self.strategy != "extra_buffer" or seq.track_slot is None or seq.track_plans \
                or seq.track_len <= seq.cached_len or not self.ensure_free_slots(1):
            return
        fresh, donated = self.slots.allocate_one(), seq.track_slot
        if self._insert(seq, seq.track_len, donated, keep_lock=True):
            seq.track_slots[seq.track_slots.index(donated)] = fresh
        else:
            self.slots.free([fresh])
        seq.track_slot = None

    # -- end of life ----------------------------------------------------------------------
    def release(self, seq: Sequence, cache: bool) -> None:
        """Give back everything `seq` holds; with `cache`, first insert what it computed
        (no_buffer: every computed token, donating the working slot; extra_buffer: up to the
        newest snapshot, donating its slot). No step in flight may still use `seq`."""
        slots = [s for s in (seq.state_slot, *seq.track_slots) if s is not None]
        if cache and self.strategy == "no_buffer" and seq.num_computed > seq.cached_len:
            if self._insert(seq, seq.num_computed, seq.state_slot, keep_lock=False):
                slots.remove(seq.state_slot)
        elif cache and self.strategy == "extra_buffer" and seq.track_slot is not None \
                and seq.track_len > seq.cached_len:
            if self._insert(seq, seq.track_len, seq.track_slot, keep_lock=False):
                slots.remove(seq.track_slot)
        own = seq.page_ids[seq.cached_len // self.page_size:]
        if own:
            self.pages.free(own)
        if slots:
            self.slots.free(slots)
        if self.tree is not None and seq.cache_node is not None:
            self.tree.unlock(seq.cache_node)
        seq.page_ids, seq.state_slot, seq.track_slots = [], None, []
        seq.pages_sent = 0
        seq.cache_node, seq.cached_len, seq.branch_len = None, 0, 0
        seq.track_idx, seq.track_len, seq.track_slot = 0, 0, None

    def _insert(self, seq: Sequence, length: int, slot: int, keep_lock: bool) -> bool:
        """Insert seq's first `length` tokens (page-aligned) with `slot`; its own pages that
        duplicate cached ones are freed and replaced by the tree's, and `cached_len` becomes
        `length` — so afterwards seq.page_ids[:length // page_size] belong to the tree. With
        `keep_lock` the sequence then locks the new node. Returns whether `slot` was used."""
        assert self.tree is not None and length % self.page_size == 0
        num_pages = length // self.page_size
        ins = self.tree.insert(seq.all_ids[:length], seq.page_ids[:num_pages], slot)
        dups = ins.duplicate_page_ids[seq.cached_len // self.page_size:]
        if dups:
            self.pages.free(dups)
        tree_pages = self.tree.path_page_ids(ins.node)
        if tree_pages != seq.page_ids[:num_pages]:
            seq.page_ids[:num_pages] = tree_pages
            seq.pages_sent = 0  # rewritten in place: the workers need the whole list again
        self.counters.inserted_tokens += length - ins.num_cached_tokens
        if keep_lock:
            self.tree.lock(ins.node)
        if seq.cache_node is not None:
            self.tree.unlock(seq.cache_node)
        seq.cache_node = ins.node if keep_lock else None
        seq.cached_len = length
        return ins.state_slot_used

    # -- introspection --------------------------------------------------------------------
    def stats(self) -> dict:
        c, tree = self.counters, self.tree.stats() if self.tree else None
        return {
            "strategy": self.strategy,
            "hit_rate": c.cached_tokens / c.prompt_tokens if c.prompt_tokens else 0.0,
            "prompt_tokens": c.prompt_tokens,
            "cached_tokens": c.cached_tokens,
            "inserted_tokens": c.inserted_tokens,
            "evicted_pages": c.evicted_pages,
            "evicted_slots": c.evicted_slots,
            **(tree._asdict() if tree else {}),
        }

    def flush(self) -> tuple[int, int]:
        """Evict every unlocked cached prefix (all of them when no sequence runs); returns
        the pages and slots freed."""
        if self.tree is None:
            return 0, 0
        pages = self.tree.evict_pages(self.tree.stats().num_cached_pages)
        slots = self.tree.evict_slots(self.tree.stats().num_cached_slots)
        for out in (pages, slots):
            self._returned(out)
        return (len(pages.page_ids) + len(slots.page_ids),
                len(pages.state_slots) + len(slots.state_slots))

    def check_integrity(self) -> None:
        if self.tree is not None:
            self.tree.check_integrity()
