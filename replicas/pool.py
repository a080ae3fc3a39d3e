"""The vLLM replicas a gateway talks to: each one's address, readiness and circuit, the choice of
one per request, and the HTTP client toward them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection
from dataclasses import dataclass, field

import httpx
from httpx_aiohttp import AiohttpTransport

from replicas.breaker import CircuitBreaker
from replicas.engine_http import EngineHTTP
from store.errors import EngineNotReady


@dataclass(eq=False)
class Backend:
    """One vLLM replica."""

    url: str
    api_key: str
    name: str
    ready: bool = False
    inflight: int = 0
    picks: int = 0  # breaks ties between equally idle replicas (round robin)
    headers: dict[str, str] = field(default_factory=dict)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)

    def __post_init__(self) -> None:
        self.headers = {"content-type": "application/json"}
        if self.api_key:
            self.headers["authorization"] = f"Bearer {self.api_key}"
        self.breaker.name = self.name

    @property
    def available(self) -> bool:
        """Ready, and its circuit lets a request through."""
        return self.ready and self.breaker.admits()


class BackendPool:
    """The replicas, and the choice of one per request (fewest requests in flight)."""

    def __init__(self, backends: list[Backend]):
        self.backends = backends
        self._readiness = asyncio.Event()

    def pick(self, exclude: Collection[Backend] = ()) -> Backend:
        ready = [b for b in self.backends if b.available and b not in exclude]
        if not ready:
            raise EngineNotReady("the inference engine is not ready yet; retry shortly")
        best = min(ready, key=lambda b: (b.inflight, b.picks))
        best.picks += 1
        return best

    @property
    def any_ready(self) -> bool:
        return any(b.ready for b in self.backends)

    def readiness_changed(self) -> None:
        """Wake the requests waiting for a replica (see `wait_ready`)."""
        self._readiness.set()
        self._readiness = asyncio.Event()

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until some replica is ready: an engine restarted by the
        supervisor is then seen by new requests as a short delay, not as an error."""
        deadline = time.monotonic() + timeout_s
        while not self.any_ready:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineNotReady("the inference engine is not ready yet; retry shortly")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._readiness.wait()


def make_client(
    connect_timeout_s: float, read_timeout_s: float, transport: str, uds: str | None = None
) -> httpx.AsyncClient:
    """The client toward the replicas (see `make_clients`)."""
    return make_clients(connect_timeout_s, read_timeout_s, transport, uds)[0]


def make_clients(
    connect_timeout_s: float, read_timeout_s: float, transport: str, uds: str | None = None
) -> tuple[httpx.AsyncClient, EngineHTTP | None]:
    """The client toward the replicas (httpx; on the aiohttp transport, the default, also
    loopgate's own client for the serving path: replicas.engine_http); with `uds`, every
    request goes over that Unix socket (the embedded engine's), whatever host its URL names."""
    timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=30.0, pool=30.0)
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    if transport == "aiohttp":
        # Measured faster than httpx's own transport under concurrency (docs/benchmarks.md).
        aio = AiohttpTransport(limits=limits, trust_env=False, uds=uds)
        client = httpx.AsyncClient(transport=aio, timeout=timeout, trust_env=False)
        return client, EngineHTTP(connect_timeout_s, read_timeout_s, uds)
    client = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(limits=limits, trust_env=False, uds=uds),
        timeout=timeout,
        trust_env=False,
    )
    return client, None
