"""Talking to vLLM: the backend pool, the HTTP client, and the SSE relay.

This is the only module that catches transport errors: connect failures become 502, timeouts
504; an engine's own error response is passed through once, untouched. A stream that breaks
after its first byte ends with exactly one OpenAI-shaped error event (never a fake [DONE]).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.errors import (
    EngineError,
    EngineNotReady,
    LoopgateError,
    UpstreamTimeout,
    UpstreamUnavailable,
    sse_error_event,
)

log = logging.getLogger("loopgate.upstream")

DONE = b"data: [DONE]"


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

    def __post_init__(self) -> None:
        self.headers = {"content-type": "application/json"}
        if self.api_key:
            self.headers["authorization"] = f"Bearer {self.api_key}"


class BackendPool:
    """The replicas, and the choice of one per request (fewest requests in flight)."""

    def __init__(self, backends: list[Backend]):
        self.backends = backends

    def pick(self) -> Backend:
        ready = [b for b in self.backends if b.ready]
        if not ready:
            raise EngineNotReady("the inference engine is not ready yet; retry shortly")
        best = min(ready, key=lambda b: (b.inflight, b.picks))
        best.picks += 1
        return best

    @property
    def any_ready(self) -> bool:
        return any(b.ready for b in self.backends)


def make_client(
    connect_timeout_s: float, read_timeout_s: float, transport: str
) -> httpx.AsyncClient:
    timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=30.0, pool=30.0)
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    if transport == "aiohttp":
        # Measured faster than httpx's own transport under concurrency (see README).
        return httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits, trust_env=False),
            timeout=timeout,
            trust_env=False,
        )
    return httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False)


def _headers(backend: Backend, request_id: str | None) -> dict[str, str]:
    """The backend's headers; vLLM names the completion `chatcmpl-<X-Request-Id>`."""
    if request_id is None:
        return backend.headers
    return {**backend.headers, "x-request-id": request_id}


def _transport_error(exc: httpx.TransportError, backend: Backend) -> LoopgateError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"the engine did not answer in time ({type(exc).__name__})")
    log.warning("engine %s transport error: %s", backend.name, exc)
    return UpstreamUnavailable("the inference engine is unreachable or closed the connection")


class Upstream:
    """Sends one request to one backend; streaming or not."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client

    async def post(
        self, backend: Backend, path: str, body: bytes, request_id: str | None = None
    ) -> bytes:
        backend.inflight += 1
        try:
            resp = await self.client.post(
                backend.url + path, content=body, headers=_headers(backend, request_id)
            )
        except httpx.TransportError as exc:
            raise _transport_error(exc, backend) from None
        finally:
            backend.inflight -= 1
        if resp.status_code >= 400:
            raise EngineError(resp.status_code, resp.content)
        return resp.content

    async def open_stream(
        self, backend: Backend, path: str, body: bytes, request_id: str | None = None
    ) -> httpx.Response:
        """Send the request; return once the engine has accepted it (status 200)."""
        request = self.client.build_request(
            "POST", backend.url + path, content=body, headers=_headers(backend, request_id)
        )
        backend.inflight += 1
        try:
            resp = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            backend.inflight -= 1
            raise _transport_error(exc, backend) from None
        if resp.status_code >= 400:
            try:
                content = await resp.aread()
            except httpx.TransportError as exc:
                raise _transport_error(exc, backend) from None
            finally:
                backend.inflight -= 1
                await resp.aclose()
            raise EngineError(resp.status_code, content)
        return resp

    async def relay(
        self,
        backend: Backend,
        resp: httpx.Response,
        engine_model: bytes,
        public_model: bytes,
        on_close: Callable[[], None] = lambda: None,
    ) -> AsyncIterator[bytes]:
        """Yield whole SSE events as they arrive, with the engine's model name rewritten.

        Closing the generator (client went away) closes the upstream connection, which makes
        vLLM abort the request.
        """
        rewriter = SSEEvents(engine_model, public_model)
        try:
            async for raw in resp.aiter_raw():
                events = rewriter.feed(raw)
                if events:
                    yield events
            if not rewriter.done:
                log.warning("engine %s ended a stream without [DONE]", backend.name)
                yield sse_error_event(UpstreamUnavailable("the engine ended the stream early"))
        except httpx.TransportError as exc:
            yield sse_error_event(_transport_error(exc, backend))
        finally:
            backend.inflight -= 1
            on_close()
            # The relay may be finishing because its task was cancelled (client disconnect);
            # the close must still run to the end so the engine sees the request go away.
            with anyio.CancelScope(shield=True):
                await resp.aclose()


class SSEEvents:
    """Cuts a byte stream into whole `data: ...\\n\\n` events and renames the model in them."""

    __slots__ = ("buffer", "done", "new", "old")

    def __init__(self, engine_model: bytes, public_model: bytes):
        self.old = b'"model":"' + engine_model + b'"'
        self.new = b'"model":"' + public_model + b'"'
        self.buffer = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buffer = self.buffer + data if self.buffer else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.buffer = buffer
            return b""
        events, self.buffer = buffer[: end + 2], buffer[end + 2 :]
        if DONE in events:
            self.done = True
        return events.replace(self.old, self.new) if self.old != self.new else events


def rename_model(body: bytes, engine_model: bytes, public_model: bytes) -> bytes:
    if engine_model == public_model:
        return body
    return body.replace(b'"model":"' + engine_model + b'"', b'"model":"' + public_model + b'"', 1)
