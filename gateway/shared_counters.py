"""Counters shared by the worker processes of one gateway: one row per worker, summed on read.

The table is a file under `<data_dir>/run` mapped into every worker's memory:

    word 0                      generation of the published placement table (gateway.follower)
    words 1 + r*slots + s       worker r's count in slot s

Each worker writes only its own row; a reader sums the rows of a slot, so a worker that dies
leaves its row behind until the parent zeroes it before starting the worker's replacement.
A name (a concurrency limit's owner, an adapter's engine name) is hashed to a slot: two names
that share a slot count together, which can only make a limit or a drain wait more conservative.
Check-and-increment is serialised per slot by a POSIX record lock on that slot's byte of the
file (`fcntl.lockf`): the kernel drops it when its holder dies, so a killed worker never leaves
a slot locked. Everything else is a plain memory read or write (8-byte aligned, no lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

WORD = 8
DEFAULT_SLOTS = 4096


class SharedCounters:
    """Worker `row`'s view of the table in `path` (`workers` rows of `slots` counters)."""

    def __init__(self, path: Path, workers: int, slots: int, row: int):
        if not 0 <= row < workers:
            raise ValueError(f"row {row} is not one of {workers} workers")
        self.path, self.workers, self.slots, self.row = path, workers, slots, row
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, table_bytes(workers, slots))
        self._words = memoryview(self._map).cast("q")
        self._base = 1 + row * slots

    @classmethod
    def create(cls, path: Path, workers: int, slots: int = DEFAULT_SLOTS) -> SharedCounters:
        """A new, zeroed table (the parent process makes it before starting any worker)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, table_bytes(workers, slots))
        finally:
            os.close(fd)
        return cls(path, workers, slots, 0)

    def close(self) -> None:
        self._words.release()
        self._map.close()
        os.close(self._fd)

    def slot(self, name: str) -> int:
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self.slots

    def total(self, slot: int) -> int:
        """The slot's count summed over every worker."""
        words, stride = self._words, self.slots
        return sum(words[1 + r * stride + slot] for r in range(self.workers))

    def add(self, slot: int, delta: int) -> None:
        """Change this worker's own count in a slot."""
        self._words[self._base + slot] += delta

    def take(self, slots: list[int], limits: list[int]) -> int | None:
        """Count one in each slot unless one is at its limit: None when taken, else the index
        of the first slot that was full (nothing is counted then)."""
        with self.locked(slots):
            for i, (slot, limit) in enumerate(zip(slots, limits, strict=True)):
                if self.total(slot) + slots[:i].count(slot) >= limit:
                    return i
            for slot in slots:
                self.add(slot, 1)
        return None

    def give_back(self, slots: Iterable[int]) -> None:
        for slot in slots:
            self.add(slot, -1)

    @contextlib.contextmanager
    def locked(self, slots: Iterable[int]) -> Iterator[None]:
        """Hold the slots' locks (taken in order, so two workers cannot deadlock)."""
        held = sorted(set(slots))
        for slot in held:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, WORD + slot)
        try:
            yield
        finally:
            for slot in reversed(held):
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, WORD + slot)

    @property
    def generation(self) -> int:
        return int(self._words[0])

    def bump_generation(self) -> int:
        """Only the primary publishes: a new generation says the placement table changed."""
        self._words[0] += 1
        return int(self._words[0])

    def zero_row(self, row: int) -> None:
        """Forget a dead worker's counts (the parent does this before replacing it)."""
        start = 1 + row * self.slots
        self._words[start : start + self.slots] = memoryview(bytes(self.slots * WORD)).cast("q")


def table_bytes(workers: int, slots: int) -> int:
    return (1 + workers * slots) * WORD
