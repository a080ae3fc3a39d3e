"""The serving path's own client (replicas.engine_http.EngineHTTP) against a real HTTP
server: bodies, engine errors, streams relayed with their model renamed, cuts and refusals.

The rest of the unit tests reach a fake engine through an httpx transport (the network edge);
this is the path `loopgate serve` takes by default, so it is tested over a real socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.upstream import Upstream, start_relay
from replicas.breaker import CircuitBreaker
from replicas.pool import Backend, make_clients
from store.errors import EngineError, UpstreamUnavailable
from tests.support.taps import SeenTap

EVENT = b'data: {"model":"engine-x","choices":[{"delta":{"content":"hi"}}]}\n\n'


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()  # the engine parses JSON: the content type must say so
    assert request.headers["content-type"] == "application/json"
    if body.get("fail"):
        return web.json_response({"error": {"message": "bad"}}, status=400)
    if not body.get("stream"):
        return web.json_response({"model": "engine-x", "choices": []})
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for _ in range(3):
        await resp.write(EVENT)
        await asyncio.sleep(0.01)
    if body.get("cut"):  # the engine dies mid-stream
        assert request.transport is not None
        request.transport.close()
        return resp
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _server() -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _upstream() -> Upstream:
    client, direct = make_clients(5, 5, "aiohttp")
    assert direct is not None
    return Upstream(client, 5, 30, direct=direct)


def _backend(url: str) -> Backend:
    return Backend(url, "", "r0", breaker=CircuitBreaker(threshold=5, cooldown_s=1))


async def _collect(relay: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in relay])


def test_bodies_and_engine_errors_go_through_the_direct_client() -> None:
    async def main() -> None:
        runner, url = await _server()
        upstream = _upstream()
        try:
            body = await upstream.post(_backend(url), "/v1/chat/completions", b'{"stream":false}')
            assert b'"model": "engine-x"' in body
            with pytest.raises(EngineError) as err:
                await upstream.post(_backend(url), "/v1/chat/completions", b'{"fail":true}')
            assert err.value.status_code == 400 and b"bad" in err.value.content
        finally:
            await upstream.client.aclose()
            await runner.cleanup()

    asyncio.run(main())


def test_a_stream_is_relayed_renamed_and_seen_by_its_taps() -> None:
    async def main() -> None:
        runner, url = await _server()
        upstream = _upstream()
        tap = SeenTap()
        try:
            opened = await upstream.open_stream(
                _backend(url),
                "/v1/chat/completions",
                b'{"stream":true}',
                None,
                b"engine-x",
                b"alias",
            )
            text = await _collect(await start_relay(upstream.relay(opened, [tap])))
        finally:
            await upstream.client.aclose()
            await runner.cleanup()
        assert text.count(b'"model":"alias"') == 3 and b"engine-x" not in text
        assert text.endswith(b"data: [DONE]\n\n")
        assert b"".join(tap.blocks).count(b"data: {") == 3 and tap.outcome == "done"

    asyncio.run(main())


def test_a_stream_cut_by_the_engine_ends_with_one_error_event() -> None:
    async def main() -> None:
        runner, url = await _server()
        upstream = _upstream()
        tap = SeenTap()
        try:
            opened = await upstream.open_stream(
                _backend(url), "/v1/chat/completions", b'{"stream":true,"cut":true}', None,
                b"engine-x", b"alias",
            )  # fmt: skip
            text = await _collect(await start_relay(upstream.relay(opened, [tap])))
        finally:
            await upstream.client.aclose()
            await runner.cleanup()
        assert text.count(b'"error"') == 1 and b"[DONE]" not in text
        assert tap.outcome == "ended"

    asyncio.run(main())


def test_a_refused_connection_is_an_unavailable_upstream() -> None:
    async def main() -> None:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        upstream = _upstream()
        backend = _backend(f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(UpstreamUnavailable):
                await upstream.post(backend, "/v1/chat/completions", b"{}")
            with pytest.raises(UpstreamUnavailable):
                await upstream.open_stream(backend, "/v1/chat/completions", b"{}", None, b"e", b"a")
        finally:
            await upstream.client.aclose()
        assert backend.inflight == 0

    asyncio.run(main())
