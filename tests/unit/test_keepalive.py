"""Idle client connections stay open for LOOPGATE_KEEPALIVE_TIMEOUT_S (the server `loopgate serve`
runs, real sockets). uvicorn's own default is 5 s: a client that paused a little longer than that
between two requests raced the server's close and got a connection reset."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import uvicorn

from gateway.cli import server_config
from replicas.supervisor import free_port
from tests.support.polling import until
from tests.unit.conftest import make_settings

REQUEST = b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n"


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(REQUEST)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)
    return head.split(b"\r\n")[0]


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout=0.2) == b""
    except TimeoutError:
        return False  # nothing to read, and the connection is still open


def test_the_default_outlives_a_load_balancers_idle_timeout(tmp_path: Path) -> None:
    config = server_config(make_settings(tmp_path))
    assert config.timeout_keep_alive == 75


async def test_an_idle_connection_is_kept_for_the_configured_time(tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(tmp_path, port=port, keepalive_timeout_s=2)
    server = uvicorn.Server(server_config(settings))
    serving = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started, "the server did not start")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await ask(reader, writer) == b"HTTP/1.1 200 OK"
        # The idle pause IS the behaviour under test (a client that waits between requests),
        # not a wait for something to happen: under the 2 s timeout the connection serves again.
        await asyncio.sleep(1.2)
        assert not await closed_by_server(reader)
        assert await ask(reader, writer) == b"HTTP/1.1 200 OK"
        idle_since = time.monotonic()
        while not await closed_by_server(reader):  # idle past it: the server closes it
            assert time.monotonic() - idle_since < 10, "the idle connection was never closed"
        assert time.monotonic() - idle_since > 1.2  # ...at its timeout, not at once
        writer.close()
    finally:
        server.should_exit = True
        await serving
