"""Talking to vLLM: requests and the SSE relay over the replica pool (replicas.pool).

This is the only module that catches transport errors: connect failures become 502, timeouts
504; an engine's own error response is passed through once, untouched. A stream that breaks
after its first byte ends with exactly one OpenAI-shaped error event (never a fake [DONE]).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import anyio
import httpx

from gateway.relay import DirectRoute, Outcome, Tap
from replicas.pool import Backend, DirectHTTP
from store.errors import (
    EngineError,
    LoopgateError,
    UpstreamTimeout,
    UpstreamUnavailable,
    sse_error_event,
)

log = logging.getLogger("loopgate.upstream")

DONE = b"data: [DONE]"


def _headers(backend: Backend, request_id: str | None) -> dict[str, str]:
    """The backend's headers; vLLM names the completion `chatcmpl-<X-Request-Id>`."""
    if request_id is None:
        return backend.headers
    return {**backend.headers, "x-request-id": request_id}


def _timed_out(exc: httpx.TransportError) -> bool:
    """Was it a timeout? httpx-aiohttp maps every aiohttp connection error (a reset, a closed
    keep-alive connection) to ConnectTimeout, so its cause decides."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, TimeoutError)
    return isinstance(exc, httpx.TimeoutException)


def _transport_error(exc: httpx.TransportError, backend: Backend) -> LoopgateError:
    if _timed_out(exc):
        kind = type(exc.__cause__ or exc).__name__
        return UpstreamTimeout(f"the engine did not answer in time ({kind})")
    log.warning("engine %s transport error: %s", backend.name, exc)
    return UpstreamUnavailable("the inference engine is unreachable or closed the connection")


@dataclass(eq=False)
class Opened:
    """A stream the engine has started: its first events are in hand, the rest to come."""

    backend: Backend
    resp: httpx.Response | aiohttp.ClientResponse
    read: Callable[[], Awaitable[bytes]]
    rewriter: SSEEvents
    first: bytes
    deadline: float


def byte_source(resp: httpx.Response | aiohttp.ClientResponse) -> Callable[[], Awaitable[bytes]]:
    """The stream's next bytes, whatever has arrived (b"" at its end).

    On the direct path (DirectHTTP, the default) this is aiohttp's buffer: httpx's layers
    around it (an async generator and an exception-mapping context per chunk, then httpx's
    own) cost more than the relay's whole work per chunk. Its errors are aiohttp's;
    `relay_error` maps both kinds. Any other client (tests' fake engine, httpx's own
    transport) is read through httpx.
    """
    if isinstance(resp, aiohttp.ClientResponse):
        return resp.content.readany
    chunks = resp.aiter_raw()

    async def read() -> bytes:
        return await anext(chunks, b"")

    return read


async def _read_all(resp: httpx.Response | aiohttp.ClientResponse) -> bytes:
    if isinstance(resp, aiohttp.ClientResponse):
        return await resp.read()
    return await resp.aread()


async def _close_response(resp: httpx.Response | aiohttp.ClientResponse) -> None:
    """Done with a response: a whole one's connection goes back to the pool; one cut short
    is closed (vLLM then aborts the request)."""
    if isinstance(resp, aiohttp.ClientResponse):
        resp.release()
    else:
        await resp.aclose()


def relay_error(exc: BaseException, backend: Backend) -> LoopgateError:
    """A transport failure while reading a stream, from httpx or (read directly) aiohttp."""
    if isinstance(exc, httpx.TransportError):
        return _transport_error(exc, backend)
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"the engine did not answer in time ({type(exc).__name__})")
    log.warning("engine %s transport error: %s", backend.name, exc)
    return UpstreamUnavailable("the inference engine is unreachable or closed the connection")


class Upstream:
    """Sends one request to one backend, streaming or not, within the timeouts, and tells the
    backend's circuit breaker how it went.

    Timeouts: connect and read (the longest gap between bytes) are the HTTP client's; the
    first-token timeout bounds the wait for a stream's first event; the total timeout bounds a
    whole request (for streams it is checked as events arrive, gaps being bounded by `read`).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        first_token_timeout_s: float = 300.0,
        total_timeout_s: float = 1800.0,
        direct: DirectHTTP | None = None,
    ):
        self.client = client
        self.direct = direct  # aiohttp on the same session, for the serving path
        self.first_token_timeout_s = first_token_timeout_s
        self.total_timeout_s = total_timeout_s

    async def post(
        self, backend: Backend, path: str, body: bytes, request_id: str | None = None
    ) -> bytes:
        backend.inflight += 1
        backend.breaker.attempt()
        try:
            async with asyncio.timeout(self.total_timeout_s):
                status, content = await self._post(
                    backend.url + path, body, _headers(backend, request_id)
                )
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            backend.breaker.failed()
            raise relay_error(exc, backend) from None
        except TimeoutError:
            backend.breaker.failed()
            raise UpstreamTimeout(
                f"the engine did not answer within {self.total_timeout_s:g}s"
            ) from None
        except BaseException:
            backend.breaker.abandoned()
            raise
        finally:
            backend.inflight -= 1
        _judge(backend, status)
        if status >= 400:
            raise EngineError(status, content)
        return content

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.direct is not None:
            async with await self.direct.send(url, body, headers) as resp:
                return resp.status, await resp.read()
        answer = await self.client.post(url, content=body, headers=headers)
        return answer.status_code, answer.content

    async def _send_stream(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> httpx.Response | aiohttp.ClientResponse:
        if self.direct is not None:
            return await self.direct.send(url, body, headers)
        request = self.client.build_request("POST", url, content=body, headers=headers)
        return await self.client.send(request, stream=True)

    async def open_stream(
        self,
        backend: Backend,
        path: str,
        body: bytes,
        request_id: str | None,
        engine_model: bytes,
        public_model: bytes,
    ) -> Opened:
        """Send the request and wait for the stream's first event (within the first-token
        timeout). Nothing has reached the client yet, so any failure here may be retried."""
        deadline = time.monotonic() + self.total_timeout_s
        backend.inflight += 1
        backend.breaker.attempt()
        resp: httpx.Response | aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(self.first_token_timeout_s):
                resp = await self._send_stream(
                    backend.url + path, body, _headers(backend, request_id)
                )
                status = (
                    resp.status if isinstance(resp, aiohttp.ClientResponse) else resp.status_code
                )
                if status >= 400:
                    content = await _read_all(resp)
                    _judge(backend, status)
                    raise EngineError(status, content)
                read = byte_source(resp)
                rewriter = SSEEvents(engine_model, public_model)
                first = b""
                while not first:
                    chunk = await read()
                    if not chunk:
                        break
                    first = rewriter.feed(chunk)
            if not first:
                raise httpx.RemoteProtocolError("the engine ended the stream before any event")
        except BaseException as exc:
            backend.inflight -= 1
            if resp is not None:
                with anyio.CancelScope(shield=True):
                    await _close_response(resp)
            if isinstance(exc, httpx.TransportError | aiohttp.ClientError):
                backend.breaker.failed()
                raise relay_error(exc, backend) from None
            if isinstance(exc, TimeoutError):
                backend.breaker.failed()
                raise UpstreamTimeout(
                    f"the engine sent no token within {self.first_token_timeout_s:g}s"
                ) from None
            if not isinstance(exc, EngineError):  # an engine's answer was judged already
                backend.breaker.abandoned()
            raise
        backend.breaker.succeeded()
        return Opened(backend, resp, read, rewriter, first, deadline)

    async def relay(
        self,
        opened: Opened,
        taps: list[Tap],
        on_close: Callable[[], None] = lambda: None,
        route: DirectRoute | None = None,
    ) -> AsyncIterator[bytes]:
        """Whole SSE events as they arrive, the engine's model name rewritten, each block seen
        by every tap (gateway.relay) in one loop; what has arrived goes out as one write.

        The first item is b"" and not for the client: awaiting it starts the generator (see
        `start_relay`), so that its `finally` (lease, taps, upstream connection) always runs.
        Closing the generator (client went away) closes the upstream connection, which makes
        vLLM abort the request.
        """
        yield b""
        backend, rewriter, read = opened.backend, opened.rewriter, opened.read
        outcome: Outcome = "cancelled"
        try:
            events = opened.first
            while True:
                if events and rewriter.done:  # this block holds [DONE]: the capture first
                    at = events.find(DONE)
                    head = _seen(taps, events[:at]) if at > 0 else b""
                    if head:
                        yield head
                    for tap in taps:
                        await tap.before_done()
                    outcome = "done"
                    yield events[at:]
                    # The chunked body's end, so the connection is reused; the client has its
                    # [DONE]: a failure now is nothing to tell it.
                    with contextlib.suppress(
                        httpx.TransportError, aiohttp.ClientError, TimeoutError
                    ):
                        while await read():
                            pass
                    return
                if events:
                    events = _seen(taps, events)
                    direct = route.body if route is not None else None  # see DirectRoute
                    if events and (direct is None or not direct.write(events)):
                        yield events
                    if time.monotonic() > opened.deadline:
                        outcome = "ended"
                        yield _seen(taps, self._overran())
                        return
                raw = await read()
                if not raw:
                    break
                events = rewriter.feed(raw)
            log.warning("engine %s ended a stream without [DONE]", backend.name)
            outcome = "ended"
            yield _seen(
                taps, sse_error_event(UpstreamUnavailable("the engine ended the stream early"))
            )
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            outcome = "ended"
            yield _seen(taps, sse_error_event(relay_error(exc, backend)))
        finally:
            backend.inflight -= 1
            on_close()
            await _close(opened, taps, outcome)

    def _overran(self) -> bytes:
        return sse_error_event(
            UpstreamTimeout(f"the stream ran past the {self.total_timeout_s:g}s total timeout")
        )


async def start_relay(relay: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Start a relay (its first item is b"" for this); the client gets the rest."""
    await anext(relay)
    return relay


async def _close(opened: Opened, taps: list[Tap], outcome: Outcome) -> None:
    """The relay may be finishing because its task was cancelled (client disconnect); the
    taps and the close must still run to the end, so the capture row gets its final state and
    the engine sees the request go away."""
    with anyio.CancelScope(shield=True):
        for tap in taps:
            try:
                await tap.end(outcome)
            except Exception:
                log.exception("a stream tap failed at the end of a stream")
        await _close_response(opened.resp)


def _seen(taps: list[Tap], events: bytes) -> bytes:
    for tap in taps:
        events = tap.see(events)
    return events


def _judge(backend: Backend, status: int) -> None:
    """An engine's answer: 5xx counts against the replica; anything else shows it works."""
    if status >= 500:
        backend.breaker.failed()
    else:
        backend.breaker.succeeded()


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
        if events.find(DONE) >= 0:  # not `in`, which tries DONE as an int first (and raises)
            self.done = True
        return events.replace(self.old, self.new) if self.old != self.new else events


def rename_model(body: bytes, engine_model: bytes, public_model: bytes) -> bytes:
    if engine_model == public_model:
        return body
    return body.replace(b'"model":"' + engine_model + b'"', b'"model":"' + public_model + b'"', 1)
