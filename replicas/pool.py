"""The vLLM replicas a gateway talks to: each one's address, readiness and circuit, the choice of
one per request, and the HTTP client toward them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection
from dataclasses import dataclass, field

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from replicas.breaker import CircuitBreaker
from replicas.engine_http import EngineStreams
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


class DirectHTTP:
    """aiohttp used directly on the serving path, over the httpx client's own aiohttp session
    (one connection pool). httpx's layers on top of aiohttp (request building, URL parsing,
    cookies, response models, an exception-mapping context per chunk) cost about as much CPU
    per request as the transport under them; everything that is not serving (adapter loads,
    health checks, tests' fake engine) keeps using the httpx client."""

    def __init__(self, transport: AiohttpTransport, timeout: httpx.Timeout, uds: str | None):
        self.transport = transport
        # Streams take loopgate's own client (replicas.engine_http), with the same timeouts.
        assert timeout.connect is not None and timeout.read is not None
        self.streams = EngineStreams(timeout.connect, timeout.read, uds)
        # httpx-aiohttp's own mapping of httpx's timeouts: connect -> sock_connect, read ->
        # sock_read (the longest gap between bytes), pool -> connect (waiting for a connection).
        self.timeout = aiohttp.ClientTimeout(
            sock_connect=timeout.connect, sock_read=timeout.read, connect=timeout.pool
        )

    def session(self) -> aiohttp.ClientSession:
        """The transport's session (made on first use, inside the event loop)."""
        if not isinstance(self.transport.client, aiohttp.ClientSession):
            self.transport.client = self.transport.get_client()
        return self.transport.client

    async def send(self, url: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """POST a JSON body; the response with its headers read (the body is the caller's)."""
        return await self.session().post(
            url,
            data=body,
            headers={"content-type": "application/json", **headers},
            timeout=self.timeout,
            allow_redirects=False,
            auto_decompress=False,
            compress=False,
        )


def make_client(
    connect_timeout_s: float, read_timeout_s: float, transport: str, uds: str | None = None
) -> httpx.AsyncClient:
    """The client toward the replicas (see `make_clients`)."""
    return make_clients(connect_timeout_s, read_timeout_s, transport, uds)[0]


def make_clients(
    connect_timeout_s: float, read_timeout_s: float, transport: str, uds: str | None = None
) -> tuple[httpx.AsyncClient, DirectHTTP | None]:
    """The client toward the replicas and, over the aiohttp transport, the direct path on the
    same session; with `uds`, every request goes over that Unix socket (the embedded engine's),
    whatever host its URL names."""
    timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=30.0, pool=30.0)
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    if transport == "aiohttp":
        # Measured faster than httpx's own transport under concurrency (docs/benchmarks.md).
        aio = AiohttpTransport(limits=limits, trust_env=False, uds=uds)
        client = httpx.AsyncClient(transport=aio, timeout=timeout, trust_env=False)
        return client, DirectHTTP(aio, timeout, uds)
    client = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(limits=limits, trust_env=False, uds=uds),
        timeout=timeout,
        trust_env=False,
    )
    return client, None
