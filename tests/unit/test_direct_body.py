"""`DirectBody` against a real uvicorn (httptools, as `loopgate serve` runs it): blocks written
straight to the connection arrive as the response's chunked body, in order, between the ASGI
start and end; before the start, or without `ServerSend`, it declines (the ASGI path)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import uvicorn

from gateway.relay import DirectBody, ServerSend

BLOCKS = [b'data: {"n":1}\n\n', b'data: {"n":2}\n\n', b"data: [DONE]\n\n"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve_once(app: Any) -> tuple[bytes, str]:
    port = _free_port()
    config = uvicorn.Config(app, port=port, http="httptools", lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(f"http://127.0.0.1:{port}/", content=b"{}")
        return r.content, r.headers.get("transfer-encoding", "")
    finally:
        server.should_exit = True
        await task


def _app(seen: list[object]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        direct = DirectBody.for_request()
        seen.append(direct is not None)
        if direct is not None:
            seen.append(direct.write(b"too early"))  # no response started yet: declined
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
        for block in BLOCKS:
            wrote = direct is not None and direct.write(block)
            seen.append(wrote)
            if not wrote:
                await send({"type": "http.response.body", "body": block, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def test_blocks_written_directly_are_the_chunked_body() -> None:
    seen: list[object] = []
    body, encoding = asyncio.run(_serve_once(ServerSend(_app(seen))))
    # found uvicorn's cycle; declined before the start; wrote every block after it
    assert seen == [True, False, True, True, True]
    assert encoding == "chunked"
    assert body == b"".join(BLOCKS)


def test_without_server_send_there_is_no_direct_path() -> None:
    seen: list[object] = []
    body, _ = asyncio.run(_serve_once(_app(seen)))
    assert seen == [False, False, False, False]
    assert body == b"".join(BLOCKS)
