"""The serving process's garbage collector, settled once the gateway has started.

A started gateway holds ~130,000 objects that live as long as the process (modules, the app, its
routes, schemas and settings). CPython's full collections walked all of them each time: with the
default thresholds a full collection ran every ~0.4 s at 2,000 requests/s and took ~50 ms, which
was ~20 % of the serving core and the p99 (measured: 1.8 s of collection in an 8 s wrk run at
c = 64; p99 95 ms → 32 ms once settled). Requests make almost no cyclic garbage (one young
collection in 20,000 requests at the threshold below: reference counting frees the rest), so a
larger young generation costs a little memory, not time.
"""

from __future__ import annotations

import gc
import socket

import uvicorn

# Tracked objects allocated (net of those freed) before a young collection; CPython's default is
# 700, which 64 requests in flight pass many times a second (~3,000 young collections in 8 s).
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Collect start-up's garbage, then move every surviving object out of the collector's
    sight (`gc.freeze`: they are never collected as cycles, and never walked again)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


class Server(uvicorn.Server):
    """uvicorn's server, with the heap settled once the app has started (its lifespan: the
    store opened, the engines known) and before the first request."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            settle()
