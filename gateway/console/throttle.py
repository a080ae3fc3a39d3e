"""Sign-in throttling: after `LIMIT` wrong keys from one client address within `WINDOW_S`, that
address's further attempts are refused (429 with Retry-After) until its oldest failure is older
than the window; other addresses sign in as before.

In-process on purpose: each gateway counts the failures it saw, and a restart forgets them.
With `loopgate serve --workers N` every console request is relayed to the primary worker with
the client's address (gateway.workers), so one count covers the host; separate gateways allow
up to `LIMIT` each per window. It counts by
the connecting address: behind a reverse proxy every client shares the proxy's address, so run
the proxy with its own limit in front. A correct key does not clear an address's failures (one
valid tenant key must not reset the count of someone guessing the admin key).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from litestar.datastructures import State

LIMIT = 10  # failures per address ...
WINDOW_S = 300.0  # ... within five minutes
MAX_ADDRESSES = 10_000  # addresses remembered at once (the oldest are forgotten first)
STATE_KEY = "console_sign_in_throttle"


class SignInThrottle:
    """Failed sign-ins per client address in a sliding window."""

    def __init__(
        self,
        limit: int = LIMIT,
        window_s: float = WINDOW_S,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit, self.window_s, self.max_addresses = limit, window_s, max_addresses
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> int | None:
        """Seconds until this address may try again; None: it may try now."""
        recent = self._recent(address)
        if len(recent) < self.limit:
            return None
        return max(1, math.ceil(recent[0] + self.window_s - self._clock()))

    def failed(self, address: str) -> None:
        """One more wrong key from this address."""
        recent = self._recent(address)
        recent.append(self._clock())
        self._failures[address] = recent
        if len(self._failures) > self.max_addresses:
            self._forget()

    def _recent(self, address: str) -> deque[float]:
        """The address's failures within the window (older ones dropped), at most `limit`."""
        recent = self._failures.get(address) or deque(maxlen=self.limit)
        cutoff = self._clock() - self.window_s
        while recent and recent[0] <= cutoff:
            recent.popleft()
        if not recent:
            self._failures.pop(address, None)
        return recent

    def _forget(self) -> None:
        for address in list(self._failures):
            self._recent(address)
        while len(self._failures) > self.max_addresses:
            del self._failures[next(iter(self._failures))]  # the longest-remembered address


def throttle_of(state: State) -> SignInThrottle:
    """The app's throttle (one per app, made on its first sign-in)."""
    found = state.get(STATE_KEY)
    if not isinstance(found, SignInThrottle):
        found = state[STATE_KEY] = SignInThrottle()
    return found
