"""Talking to vLLM: requests and the SSE relay over the replica pool (replicas.pool).

This is the only module that catches transport errors: connect failures become 502, timeouts
504; an engine's own error response is passed through once, untouched. A stream that breaks
after its first byte ends with exactly one OpenAI-shaped error event (never a fake [DONE]).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import anyio
import httpx

from gateway.relay import DirectRoute, Outcome, Tap
from replicas.engine_http import EngineHTTP, EngineTimeout, Exchange, Wakeup
from replicas.pool import Backend
from store.errors import (
    EngineError,
    LoopgateError,
    UpstreamTimeout,
    UpstreamUnavailable,
    sse_error_event,
)

log = logging.getLogger("loopgate.upstream")

DONE = b"data: [DONE]"
# Blocks a client is not ready for, held before the engine's connection stops being read.
HELD_BYTES = 256 * 1024

Answer = httpx.Response | Exchange


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
    resp: Answer
    read: Callable[[], Awaitable[bytes]]
    rewriter: SSEEvents
    first: bytes
    deadline: float


def byte_source(resp: Answer) -> Callable[[], Awaitable[bytes]]:
    """The stream's next bytes, whatever has arrived (b"" at its end).

    On the default path streams come from loopgate's own client (replicas.engine_http),
    read this way only until the relay takes the body over. Without it (tests' fake engine,
    `LOOPGATE_UPSTREAM_TRANSPORT=httpx`) they are read through httpx; `relay_error` maps the
    errors of both.
    """
    if isinstance(resp, Exchange):
        return resp.read
    chunks = resp.aiter_raw()

    async def read() -> bytes:
        return await anext(chunks, b"")

    return read


async def _read_all(resp: Answer) -> bytes:
    if isinstance(resp, Exchange):
        return await resp.read_all()
    return await resp.aread()


async def _close_response(resp: Answer) -> None:
    """Done with a response: a whole one's connection goes back to the pool; one cut short
    is closed (vLLM then aborts the request)."""
    if isinstance(resp, Exchange):
        resp.close()
    else:
        await resp.aclose()


# What a failed read of an engine's answer raises, whichever client read it.
TRANSPORT_ERRORS = (httpx.TransportError, OSError)


def _own_timeout(exc: BaseException) -> bool:
    """A TimeoutError of this module's own deadlines (a request's total, a stream's first
    token), not a client's connect or read timeout."""
    return isinstance(exc, TimeoutError) and not isinstance(exc, EngineTimeout)


def _failure(exc: BaseException, backend: Backend, late: str) -> LoopgateError | None:
    """What a failed engine request becomes, its replica's breaker told: one of this module's
    deadlines (`late` says which) or a transport failure; None for anything else (cancelled,
    an engine's own answer), which the caller handles."""
    if _own_timeout(exc):
        backend.breaker.failed()
        return UpstreamTimeout(late)
    if isinstance(exc, TRANSPORT_ERRORS):
        backend.breaker.failed()
        return relay_error(exc, backend)
    return None


def relay_error(exc: BaseException, backend: Backend) -> LoopgateError:
    """A transport failure talking to an engine, from httpx or from loopgate's own client."""
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
        direct: EngineHTTP | None = None,
    ):
        self.client = client
        self.direct = direct  # loopgate's own client, for the serving path (replicas.engine_http)
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
        except BaseException as exc:
            late = f"the engine did not answer within {self.total_timeout_s:g}s"
            if (error := _failure(exc, backend, late)) is not None:
                raise error from None
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
            exchange = await self.direct.post(url, body, headers)
            try:
                return exchange.status, await exchange.read_all()
            finally:
                exchange.close()  # cut short (cancelled): the engine aborts the request
        answer = await self.client.post(url, content=body, headers=headers)
        return answer.status_code, answer.content

    async def _send_stream(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        if self.direct is not None:
            return await self.direct.post(url, body, headers)
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
        resp: Answer | None = None
        try:
            async with asyncio.timeout(self.first_token_timeout_s):
                resp = await self._send_stream(
                    backend.url + path, body, _headers(backend, request_id)
                )
                status = resp.status_code if isinstance(resp, httpx.Response) else resp.status
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
            late = f"the engine sent no token within {self.first_token_timeout_s:g}s"
            if (error := _failure(exc, backend, late)) is not None:
                raise error from None
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
        by every tap (gateway.relay); what has arrived goes out as one write. The `Pump` does
        that work per block (on the default path inside the engine connection's callback) and
        writes to the client itself when it can; this generator yields the rest: blocks the
        client's connection could not take, `[DONE]` after the taps' `before_done`, or the
        error event that ends a stream cut short.

        The first item is b"" and not for the client: awaiting it starts the generator (see
        `start_relay`), so that its `finally` (lease, taps, upstream connection) always runs.
        Closing the generator (client went away) closes the upstream connection, which makes
        vLLM abort the request.
        """
        yield b""
        backend, resp = opened.backend, opened.resp
        pump = Pump(opened, taps, route)
        outcome: Outcome = "cancelled"
        try:
            pump.events(opened.first)
            if isinstance(resp, Exchange):  # pushed: the engine's blocks reach the pump as
                wait = pump.ready  # they arrive (replicas.engine_http)
                resp.attach(pump)
            else:  # pulled, by this task
                wait = functools.partial(pump.pull, opened.read)
            while True:
                await wait()
                if pump.held:  # blocks the relay could not write to the client itself
                    pump.busy = True  # nothing overtakes them meanwhile
                    while pump.held:
                        yield pump.take()
                    pump.busy = False
                if pump.over:
                    break
            if pump.raised is not None:
                raise pump.raised
            if pump.tail is not None:  # the events before [DONE] went out: the capture next
                for tap in taps:
                    await tap.before_done()
                outcome = "done"
                yield pump.tail
                await _after_done(resp, opened.read)
                return
            outcome = "ended"
            yield _seen(taps, self._cut(pump, backend))
        finally:
            pump.over = True  # the taps see nothing more, whatever still arrives
            backend.inflight -= 1
            on_close()
            await _close(opened, taps, outcome)

    def _cut(self, pump: Pump, backend: Backend) -> bytes:
        """The error event that ends a stream without its [DONE]."""
        if pump.overran:
            error: LoopgateError = UpstreamTimeout(
                f"the stream ran past the {self.total_timeout_s:g}s total timeout"
            )
        elif pump.cause is None:
            log.warning("engine %s ended a stream without [DONE]", backend.name)
            error = UpstreamUnavailable("the engine ended the stream early")
        else:
            error = relay_error(pump.cause, backend)
        return sse_error_event(error)


class Pump:
    """A relayed stream's work on each block of the engine's answer, done where the block
    arrives: whole events cut and renamed (SSEEvents), seen by the taps, then written to the
    client's connection (DirectBody) when it can take them, else *held* for the relay's task
    to send through the ASGI path. On the default path it is the answer's sink
    (replicas.engine_http), called from the engine connection's `data_received`: a block costs
    no task wake-up, no future and no await chain. The task wakes only for held blocks and for
    the end: `[DONE]` (the taps' `before_done` must be awaited before it goes out), the
    engine's end or failure, the total timeout, or a tap that raised.
    """

    __slots__ = (
        "_wakeup",
        "busy",
        "cause",
        "deadline",
        "held",
        "held_bytes",
        "over",
        "overran",
        "raised",
        "resp",
        "rewriter",
        "route",
        "tail",
        "taps",
    )

    def __init__(self, opened: Opened, taps: list[Tap], route: DirectRoute | None) -> None:
        self.rewriter, self.taps, self.route = opened.rewriter, taps, route
        self.resp, self.deadline = opened.resp, opened.deadline
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.busy = False  # the task is sending held blocks: later ones wait behind them
        self.over = False  # nothing more is relayed; the fields below say why
        self.tail: bytes | None = None  # `[DONE]` (and anything after it)
        self.cause: BaseException | None = None  # the engine's failure (None: it just ended)
        self.overran = False
        self.raised: Exception | None = None  # a tap's (or the client write's) exception
        self._wakeup = Wakeup()

    def __call__(self, item: bytes | BaseException | None) -> None:
        """The engine's next bytes, or the end of its answer (None, or what cut it)."""
        if self.over:
            return
        if isinstance(item, bytes):
            try:
                self.events(self.rewriter.feed(item))
            except Exception as exc:
                self._stop(raised=exc)
        else:
            self._stop(cause=item)

    def events(self, events: bytes) -> None:
        """Whole events (renamed already) on their way to the client."""
        if not events:
            return
        if self.rewriter.done:  # this block holds [DONE]: the task finishes the stream
            at = events.find(DONE)
            if at > 0:
                self._out(_seen(self.taps, events[:at]))
            self.tail = events[at:]
            self._stop()
            return
        self._out(_seen(self.taps, events))
        if time.monotonic() > self.deadline:
            self.overran = True
            self._stop()

    def _out(self, events: bytes) -> None:
        if not events:
            return
        if not self.held and not self.busy:
            direct = self.route.body if self.route is not None else None  # see DirectRoute
            if direct is not None and direct.write(events):
                return
        self.held.append(events)
        self.held_bytes += len(events)
        if self.held_bytes > HELD_BYTES and isinstance(self.resp, Exchange):
            self.resp.pause()  # the client is slow: let the engine wait (TCP's flow control)
        self._wakeup.set()

    def take(self) -> bytes:
        """The held blocks, as one."""
        held, self.held = self.held, []
        if self.held_bytes > HELD_BYTES and isinstance(self.resp, Exchange):
            self.resp.resume()
        self.held_bytes = 0
        return held[0] if len(held) == 1 else b"".join(held)

    def _stop(self, cause: BaseException | None = None, raised: Exception | None = None) -> None:
        self.over, self.cause, self.raised = True, cause, raised
        self._wakeup.set()

    async def ready(self) -> None:
        """Wait until there are held blocks to send, or the relay is over."""
        if not self.held and not self.over:
            await self._wakeup.wait()

    async def pull(self, read: Callable[[], Awaitable[bytes]]) -> None:
        """Read the engine's next bytes in this task (a client that cannot push) and pump them."""
        try:
            raw: bytes | BaseException | None = await read() or None
        except TRANSPORT_ERRORS as exc:
            raw = exc
        self(raw)


async def _after_done(resp: Answer, read: Callable[[], Awaitable[bytes]]) -> None:
    """The client has its [DONE]; let the answer's body end so its connection is reused (a
    failure now is nothing to tell the client)."""
    if isinstance(resp, Exchange):
        resp.detach()  # the connection reads the rest itself, then returns to its pool
        return
    with contextlib.suppress(*TRANSPORT_ERRORS):
        while await read():
            pass


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
