"""Waiting for a condition in tests: poll it with a deadline, never sleep a fixed time and hope."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    """Return once `condition()` is true; fail with `what` if it is not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def until_sync(condition: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    """`until` for a test without an event loop."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
