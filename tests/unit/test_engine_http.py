"""loopgate's own client for streamed answers (replicas.engine_http) and the relay's pump on it
(gateway.upstream.Pump), against real HTTP servers on real sockets: connections kept alive
and reused, a connection the engine closed while idle, the read timeout, a client too slow
for the engine (reading paused, nothing lost or reordered), a stream cut short by its client
(the engine sees the request go away), a body without a length, and answers that are not HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from gateway.relay import Outcome
from gateway.upstream import HELD_BYTES, Upstream, start_relay
from replicas.breaker import CircuitBreaker
from replicas.engine_http import EngineConnectionError, EngineHTTP
from replicas.pool import Backend, make_clients
from store.errors import UpstreamTimeout, UpstreamUnavailable
from tests.support.taps import SeenTap

PATH = "/v1/chat/completions"


def _event(i: int) -> bytes:
    return b'data: {"model":"engine-x","i":%d,"choices":[{"delta":{"content":"t"}}]}\n\n' % i


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def _engine(handler: Handler) -> AsyncIterator[tuple[str, list[object]]]:
    """An aiohttp server on a free port; yields its URL and the peers it accepted."""
    peers: list[object] = []

    async def wrapped(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        if request.transport not in peers:
            peers.append(request.transport)
        return await handler(request)

    app = web.Application()
    app.router.add_post(PATH, wrapped)
    runner = web.AppRunner(app, keepalive_timeout=30)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", peers
    finally:
        await runner.cleanup()


async def _sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    return resp


async def _stream(request: web.Request, events: int = 5, gap_s: float = 0.0) -> web.StreamResponse:
    resp = await _sse(request)
    for i in range(events):
        await resp.write(_event(i))
        if gap_s:
            await asyncio.sleep(gap_s)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def _upstream(read_timeout_s: float = 5) -> Upstream:
    client, direct = make_clients(5, read_timeout_s, "aiohttp")
    assert direct is not None
    return Upstream(client, 5, 30, direct=direct)


def _backend(url: str) -> Backend:
    return Backend(url, "", "r0", breaker=CircuitBreaker(threshold=5, cooldown_s=1))


async def _relay(upstream: Upstream, url: str, tap: SeenTap) -> AsyncIterator[bytes]:
    opened = await upstream.open_stream(_backend(url), PATH, b"{}", "rid", b"engine-x", b"alias")
    return await start_relay(upstream.relay(opened, [tap]))


async def _text(upstream: Upstream, url: str, tap: SeenTap | None = None) -> bytes:
    relay = await _relay(upstream, url, tap or SeenTap())
    return b"".join([block async for block in relay])


async def _close(upstream: Upstream) -> None:
    await upstream.client.aclose()
    assert upstream.direct is not None
    upstream.direct.close()


def test_streams_are_pushed_through_the_pump_and_reuse_one_connection() -> None:
    async def main() -> None:
        async with _engine(lambda r: _stream(r, 20)) as (url, peers):
            upstream = _upstream()
            tap = SeenTap()
            try:
                first = await _text(upstream, url, tap)
                await asyncio.sleep(0.05)  # the chunked body's last frame, after [DONE]
                second = await _text(upstream, url)
            finally:
                await _close(upstream)
        for text in (first, second):
            assert text.count(b'"model":"alias"') == 20 and b"engine-x" not in text
            assert [int(x) for x in _ids(text)] == list(range(20))
            assert text.endswith(b"data: [DONE]\n\n")
        assert tap.outcome == "done" and b"".join(tap.blocks).count(b"data: {") == 20
        assert len(peers) == 1  # the second stream went over the first one's connection

    asyncio.run(main())


def _ids(text: bytes) -> list[bytes]:
    return [part.split(b",")[0] for part in text.split(b'"i":')[1:]]


def test_a_connection_the_engine_closed_while_idle_is_replaced_without_an_error() -> None:
    async def main() -> None:
        async with _engine(lambda r: _stream(r, 3)) as (url, peers):
            upstream = _upstream()
            try:
                await _text(upstream, url)
                await asyncio.sleep(0.05)
                assert upstream.direct is not None and upstream.direct.idle
                # The engine closes the idle connection just as the next request takes it:
                # the close is under way (the socket goes in the loop's next round), so the
                # request is written to a connection that dies before answering.
                assert isinstance(peers[0], asyncio.Transport)
                peers[0].close()
                text = await _text(upstream, url)
            finally:
                await _close(upstream)
        assert text.endswith(b"data: [DONE]\n\n") and len(peers) == 2

    asyncio.run(main())


def test_an_engine_that_stops_sending_hits_the_read_timeout() -> None:
    over = asyncio.Event()

    async def stalls(request: web.Request) -> web.StreamResponse:
        resp = await _sse(request)
        await resp.write(_event(0))
        await over.wait()  # silent until the test is over
        return resp

    async def main() -> None:
        async with _engine(stalls) as (url, _):
            upstream = _upstream(read_timeout_s=0.3)
            tap = SeenTap()
            try:
                text = await asyncio.wait_for(_text(upstream, url, tap), 10)
            finally:
                over.set()
                await _close(upstream)
        assert text.startswith(_event(0).replace(b"engine-x", b"alias"))
        assert text.count(b'"error"') == 1 and b"timeout" in text and b"[DONE]" not in text
        assert tap.outcome == "ended"

    asyncio.run(main())


def test_a_slow_client_pauses_the_engine_and_loses_nothing() -> None:
    big = 2_000  # events of ~1 KiB: 2 MB, far past what the relay holds before pausing

    async def floods(request: web.Request) -> web.StreamResponse:
        resp = await _sse(request)
        pad = b"x" * 1000
        for i in range(big):
            await resp.write(_event(i)[:-3] + b',"pad":"' + pad + b'"}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def main() -> None:
        async with _engine(floods) as (url, _):
            upstream = _upstream()
            got = []
            try:
                relay = await _relay(upstream, url, SeenTap())
                async for block in relay:
                    got.append(block)
                    await asyncio.sleep(0.05)  # a client reading slowly
            finally:
                await _close(upstream)
        text = b"".join(got)
        assert [int(x) for x in _ids(text)] == list(range(big))
        assert text.endswith(b"data: [DONE]\n\n")
        # What the relay held for the client stayed near its bound: past it, the engine's
        # connection stopped being read (one more read of at most 256 KiB may land).
        assert max(len(block) for block in got) <= HELD_BYTES + 256 * 1024 + 2048
        assert len(got) >= len(text) // (HELD_BYTES + 256 * 1024 + 2048)

    asyncio.run(main())


def test_a_client_that_goes_away_closes_the_engines_connection() -> None:
    gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = await _sse(request)
        try:
            for i in range(10_000):
                await resp.write(_event(i))
                await asyncio.sleep(0.01)
        except (ConnectionResetError, asyncio.CancelledError):
            gone.set()
            raise
        return resp

    class SlowEnd(SeenTap):
        """Ends as a capture does: awaiting a write, while the engine's blocks keep coming."""

        seen_at_end = -1

        async def end(self, outcome: Outcome) -> None:
            self.outcome, self.seen_at_end = outcome, len(self.blocks)
            await asyncio.sleep(0.1)

    async def main() -> None:
        async with _engine(endless) as (url, _):
            upstream = _upstream()
            tap = SlowEnd()
            try:
                relay = await _relay(upstream, url, tap)
                async for _ in relay:
                    break
                await relay.aclose()  # type: ignore[attr-defined]
                await asyncio.wait_for(gone.wait(), 5)
            finally:
                await _close(upstream)
        assert tap.outcome == "cancelled"
        assert len(tap.blocks) == tap.seen_at_end  # nothing reached the taps after the end

    asyncio.run(main())


async def _raw_server(answer: bytes) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}{PATH}"


def test_a_body_without_a_length_ends_with_the_connection() -> None:
    async def main() -> None:
        server, url = await _raw_server(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + _event(0) + b"data: [DONE]\n\n"
        )
        streams = EngineHTTP(5, 5)
        try:
            exchange = await streams.post(url, b"{}", {})
            body = await exchange.read_all()
        finally:
            streams.close()
            server.close()
        assert exchange.status == 200 and body == _event(0) + b"data: [DONE]\n\n"

    asyncio.run(main())


@pytest.mark.parametrize(
    "answer",
    [b"SMTP ready\r\n\r\n", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"],
)
def test_an_answer_that_is_not_http_is_a_connection_error(answer: bytes) -> None:
    async def main() -> None:
        server, url = await _raw_server(answer)
        streams = EngineHTTP(5, 5)
        try:
            with pytest.raises(EngineConnectionError):
                exchange = await streams.post(url, b"{}", {})
                await exchange.read_all()
        finally:
            streams.close()
            server.close()

    asyncio.run(main())


def test_the_relay_maps_client_failures_to_openai_errors() -> None:
    async def main() -> None:
        server, url = await _raw_server(b"")  # accepts, reads the request, closes
        upstream = _upstream()
        backend = _backend(url.removesuffix(PATH))
        try:
            with pytest.raises(UpstreamUnavailable):
                await upstream.open_stream(backend, PATH, b"{}", None, b"e", b"a")
        finally:
            await _close(upstream)
            server.close()
        assert backend.inflight == 0

    asyncio.run(main())


def test_an_answer_that_never_comes_is_a_timeout_and_counts_against_the_replica() -> None:
    over = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        await over.wait()
        return web.json_response({})

    async def main() -> None:
        async with _engine(silent) as (url, _):
            upstream = _upstream(read_timeout_s=0.3)
            backend = _backend(url)
            try:
                with pytest.raises(UpstreamTimeout, match="EngineTimeout"):
                    await upstream.post(backend, PATH, b"{}")
            finally:
                over.set()
                await _close(upstream)
        assert backend.breaker.failures == 1 and backend.inflight == 0

    asyncio.run(main())
