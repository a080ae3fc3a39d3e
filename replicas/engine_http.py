"""The serving path's own HTTP/1.1 client toward the engines, made for streamed answers.

A streamed answer is many small chunks (one per engine step and stream). Through aiohttp, each
chunk crosses its protocol, a `StreamReader`, a future that wakes the reading task, a read
timer rescheduled per chunk, and the task's chain of awaits back to the relay: more Python than
the relay's own work on the chunk (whole events cut, the model renamed, the taps, one write to
the client). Here the connection's `data_received` parses the response with httptools (C) and
hands the body to the exchange's *sink*, a plain function: the relay does its work right there
and wakes its task only when it must (see `gateway.upstream.Pump`).

What it does, and no more: POST over a pool of kept-alive connections per engine (TCP, TLS or a
Unix socket), the status and headers awaited, the body pulled (`Exchange.read`) until a sink
takes it over; a connection timeout, and a read timeout that bounds the longest gap between
bytes (one timer per exchange, not one per chunk). A kept-alive connection that the engine
closed while idle fails before any byte of its answer: the request is then sent once more on a
new connection (what HTTP clients do for a request that was never answered). Non-streamed
requests take it too (`Exchange.read_all`): a fifth fewer instructions per chat request than
aiohttp's client (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Callable
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import httptools

# Idle connections kept per engine; more are closed when their answer ends.
MAX_IDLE = 256


class EngineConnectionError(ConnectionError):
    """The engine closed the connection, or sent what is not HTTP/1.1."""


class EngineTimeout(TimeoutError):
    """No connection within the connect timeout, or no byte within the read timeout."""


class Target(NamedTuple):
    """Where a URL's requests go: the connection's address and the request line's parts."""

    scheme: str
    host: str
    port: int
    path: str
    host_header: str


@functools.lru_cache(maxsize=256)
def target_of(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port, path, parts.netloc)


class Wakeup:
    """One task waiting for news from the event loop's callbacks (a connection's, a relay's)."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Exchange:
    """One request's answer: its status, then its body, pulled with `read` until
    `attach` hands it to a sink, which from then on gets every block as it arrives (on the
    event loop, from the connection's callback; it must not raise) and, at the end, `None`
    (the body is complete) or the exception that cut it."""

    __slots__ = (
        "_chunks",
        "_wakeup",
        "conn",
        "detached",
        "done",
        "error",
        "got_bytes",
        "sink",
        "status",
    )

    def __init__(self, conn: EngineConnection) -> None:
        self.conn: EngineConnection | None = conn
        self.status = 0
        self.sink: Callable[[bytes | BaseException | None], None] | None = None
        self.done = False  # the body is complete, or cut (then `error` says why)
        self.error: BaseException | None = None
        self.got_bytes = False
        self.detached = False
        self._chunks: list[bytes] = []
        self._wakeup = Wakeup()

    # -- from the connection ------------------------------------------------------------------

    def body(self, block: bytes) -> None:
        if self.sink is not None:
            self.sink(block)
        else:
            self._chunks.append(block)
            self._wakeup.set()

    def finish(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.done, self.error, self.conn = True, error, None
        if self.sink is not None:
            self.sink(error)
        self._wakeup.set()

    def headers_done(self, status: int) -> None:
        self.status = status
        self._wakeup.set()

    # -- for the reader -----------------------------------------------------------------------

    async def headers_in(self) -> None:
        """Wait for the status line and headers."""
        while not self.status and not self.done:
            await self._wakeup.wait()
        if not self.status:
            raise self.error or EngineConnectionError("the engine sent no answer")

    async def read(self) -> bytes:
        """What has arrived of the body since the last read, waiting for some; b"" at its end."""
        while not self._chunks and not self.done:
            await self._wakeup.wait()
        if self._chunks:
            chunks, self._chunks = self._chunks, []
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self.error is not None:
            raise self.error
        return b""

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def attach(self, sink: Callable[[bytes | BaseException | None], None]) -> None:
        """From now on the body goes to `sink`, starting with what has arrived already (and
        the end, if the body is over)."""
        before, self._chunks = b"".join(self._chunks), []
        self.sink = sink
        if before:
            sink(before)
        if self.done:
            sink(self.error)

    def pause(self) -> None:
        """Stop reading the body (the sink has enough waiting); the read timeout waits too."""
        if self.conn is not None:
            self.conn.pause()

    def resume(self) -> None:
        if self.conn is not None:
            self.conn.resume()

    def detach(self) -> None:
        """Done with the answer, but let its body run to its end (after `[DONE]`, only the
        chunked encoding's last frame is left): the connection then returns to its pool."""
        self.sink, self.detached = _ignore, True
        self.resume()

    def close(self) -> None:
        """Done with the answer. Cut short (not detached), its connection is closed: vLLM
        then aborts the request. A whole answer's connection went back to its pool already."""
        conn = self.conn
        if conn is None or self.done or self.detached:
            return
        self.sink, self.done, self.conn = None, True, None
        conn.abort()


def _ignore(_: bytes | BaseException | None) -> None:
    pass


class EngineConnection(asyncio.Protocol):
    """One kept-alive connection to one engine; at most one exchange at a time."""

    __slots__ = (
        "_keep_alive",
        "_last",
        "_message_done",
        "_parts",
        "_paused",
        "_timer",
        "_until_eof",
        "closed",
        "exchange",
        "key",
        "loop",
        "parser",
        "pool",
        "transport",
    )

    def __init__(self, pool: EngineHTTP, key: tuple[str, str, int]) -> None:
        self.pool, self.key = pool, key
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.closed = False
        self._parts: list[bytes] = []
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._until_eof = True
        self._message_done = False
        self._keep_alive = False
        self._paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: the connection is not usable
            self.abort()
            return
        self._last = self.loop.time()
        exchange.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._end(EngineConnectionError(f"the engine's answer is not valid HTTP: {exc}"))
            return
        parts = self._parts
        if parts:  # what arrived, as one block however many chunks it held
            block = parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
            exchange.body(block)
        if self._message_done:
            self._complete(exchange)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        if self._until_eof and exchange.status and exc is None:
            exchange.finish(None)  # a body without a length ends with the connection
        else:
            exchange.finish(exc or EngineConnectionError("the engine closed the connection"))

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._until_eof = False  # the body's end is framed, not the connection's

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        self._keep_alive = self.parser.should_keep_alive()  # known here, not at the end
        exchange.headers_done(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self._parts.append(body)

    def on_message_complete(self) -> None:
        self._message_done = True  # ended by data_received, after the body's last block

    # -- the exchange -------------------------------------------------------------------------

    def start(self, request: bytes) -> Exchange:
        assert self.transport is not None and self.exchange is None
        if self.closed or self.transport.is_closing():  # closing, not yet told: see `post`
            raise EngineConnectionError("the engine closed the connection")
        exchange = self.exchange = Exchange(self)
        self._until_eof = True
        self._arm()
        self.transport.write(request)
        return exchange

    def pause(self) -> None:
        if self.transport is not None and not self.closed and not self._paused:
            self._paused = True
            self._stop_timer()
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed and self._paused:
            self._paused = False
            self.transport.resume_reading()
            self._arm()

    def _arm(self) -> None:
        """Start the read timeout, counting from now."""
        self._last = self.loop.time()
        self._timer = self.loop.call_at(self._last + self.pool.read_timeout_s, self._check)

    def _check(self) -> None:
        """The read timeout: no byte for the pool's `read_timeout_s` ends the exchange."""
        due = self._last + self.pool.read_timeout_s
        if self.loop.time() >= due:
            self._timer = None
            self._end(EngineTimeout(f"no byte from the engine in {self.pool.read_timeout_s:g}s"))
        else:
            self._timer = self.loop.call_at(due, self._check)

    def _complete(self, exchange: Exchange) -> None:
        self._message_done = False
        self.exchange = None
        self._stop_timer()
        keep = self._keep_alive and not self.closed
        exchange.finish(None)
        if keep:
            self.pool.release(self)
        else:
            self.abort()

    def _end(self, error: BaseException) -> None:
        exchange, self.exchange = self.exchange, None
        self.abort()
        if exchange is not None:
            exchange.finish(error)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        self._stop_timer()
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()


class EngineHTTP:
    """The serving path's connections to the engines, kept alive (see the module's notes)."""

    def __init__(self, connect_timeout_s: float, read_timeout_s: float, uds: str | None = None):
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.uds = uds  # every request goes over this Unix socket (the embedded engine's)
        self.idle: dict[tuple[str, str, int], list[EngineConnection]] = {}
        self.connections: set[EngineConnection] = set()
        self._tls: ssl.SSLContext | None = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Exchange:
        """POST `body` to `url`; returns once the answer's status and headers are in."""
        target = target_of(url)
        head = [f"POST {target.path} HTTP/1.1\r\nhost: {target.host_header}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers.items()]
        head.append(f"content-length: {len(body)}\r\n\r\n")
        request = "".join(head).encode("latin-1") + body
        while True:
            conn, reused = await self._connection(target)
            exchange: Exchange | None = None
            try:
                exchange = conn.start(request)
                await exchange.headers_in()
            except ConnectionError:
                conn.abort()
                if reused and (exchange is None or not exchange.got_bytes):
                    continue  # closed while idle, before our request: send it again, anew
                raise
            except BaseException:
                if exchange is not None:
                    exchange.close()
                raise
            return exchange

    async def _connection(self, target: Target) -> tuple[EngineConnection, bool]:
        key = (target.scheme, target.host, target.port)
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn, True
        loop = asyncio.get_running_loop()
        factory = functools.partial(EngineConnection, self, key)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.uds is not None:
                    _, conn = await loop.create_unix_connection(factory, self.uds)
                elif target.scheme == "https":
                    _, conn = await loop.create_connection(
                        factory, target.host, target.port, ssl=self._tls_context()
                    )
                else:
                    _, conn = await loop.create_connection(factory, target.host, target.port)
        except TimeoutError:
            raise EngineTimeout(
                f"no connection to the engine in {self.connect_timeout_s:g}s"
            ) from None
        self.connections.add(conn)
        return conn, False

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def release(self, conn: EngineConnection) -> None:
        idle = self.idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE:
            conn.abort()
            return
        idle.append(conn)

    def forget(self, conn: EngineConnection) -> None:
        self.connections.discard(conn)
        idle = self.idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        """Close every connection (answers still streaming end with an error)."""
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                conn.abort()
        self.idle.clear()
