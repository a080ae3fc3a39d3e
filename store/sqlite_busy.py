"""SQLite's one busy answer that its busy timeout does not cover.

The store shares one connection between coroutines: a read that is still being stepped keeps a
read snapshot open on it. When another process (a worker, another gateway) commits meanwhile, a
write on this connection cannot upgrade that stale snapshot and SQLite refuses it at once with
SQLITE_BUSY_SNAPSHOT ("database is locked"), without waiting. The read ends within moments, once
the connection's thread gets to it; so the write waits for it here, giving the thread back
between tries.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

SQLITE_BUSY_SNAPSHOT = 517


def stale_snapshot(exc: BaseException) -> bool:
    return (
        isinstance(exc, sqlite3.OperationalError)
        and getattr(exc, "sqlite_errorcode", None) == SQLITE_BUSY_SNAPSHOT
    )


async def when_fresh(write: Callable[[], Awaitable[T]], wait_s: float = 30.0) -> T:
    """Run `write` (which must change nothing when refused); again while SQLite says the
    connection's snapshot is stale, for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    delay = 0.002
    while True:
        try:
            return await write()
        except sqlite3.OperationalError as exc:
            if not stale_snapshot(exc) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
