"""SQLite's busy answers that its busy timeout does not cover.

The store shares one connection between coroutines: a read that is still being stepped keeps a
read snapshot open on it. A write on this connection then cannot wait for another process's
write lock (a worker's, another gateway's): SQLite refuses it at once, without the busy timeout,
with SQLITE_BUSY while the other holds the lock (waiting could deadlock) and with
SQLITE_BUSY_SNAPSHOT once the other has committed (the snapshot is stale). Both say "database
is locked". The read ends within moments, once the connection's thread gets to it; so the write
tries again here, giving the thread back between tries, until its own deadline.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

SQLITE_BUSY = 5  # the primary code; extended ones (BUSY_SNAPSHOT 517, ...) share its low byte


def busy(exc: BaseException) -> bool:
    return (
        isinstance(exc, sqlite3.OperationalError)
        and getattr(exc, "sqlite_errorcode", 0) & 0xFF == SQLITE_BUSY
    )


async def when_fresh(write: Callable[[], Awaitable[T]], wait_s: float = 30.0) -> T:
    """Run `write` (which must change nothing when refused); again while SQLite says busy, for
    up to `wait_s` in all (a write that waited out the busy timeout is not tried again)."""
    deadline = time.monotonic() + wait_s
    delay = 0.002
    while True:
        try:
            return await write()
        except sqlite3.OperationalError as exc:
            if not busy(exc) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
