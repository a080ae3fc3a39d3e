"""Another process holding SQLite's write lock: the gateway's write waits for it (longer than the
5 s that once failed a demo's feedback POST with a 500), and a lock that outlasts the wait is a
retryable 503 in OpenAI shape, never a 500 with a trace."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import aiosqlite
from litestar import Litestar, get
from litestar.testing import TestClient

from store import Store, open_store
from store.errors import EXCEPTION_HANDLERS
from tests.unit.conftest import Env


async def test_a_write_waits_out_another_connections_lock(tmp_path: Path) -> None:
    path = tmp_path / "loopgate.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        held = threading.Event()

        def other_process() -> None:  # a training worker mid-transaction, say
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            held.set()
            time.sleep(6.0)
            conn.execute("COMMIT")
            conn.close()

        thread = threading.Thread(target=other_process)
        thread.start()
        assert await asyncio.to_thread(held.wait, 5)
        started = time.monotonic()
        tenant = await store.create_tenant("ten_1", "acme")
        waited = time.monotonic() - started
        thread.join()
        assert waited >= 5.5  # it waited for the lock (the old 5 s timeout failed here)
        assert await store.get_tenant("acme") == tenant
    finally:
        await store.close()


@get("/locked", sync_to_thread=False)
def locked() -> None:
    raise sqlite3.OperationalError("database is locked")


@get("/broken", sync_to_thread=False)
def broken() -> None:
    raise sqlite3.OperationalError("no such table: secrets_of_the_schema")


def test_a_lock_that_outlasts_the_wait_is_a_retryable_503() -> None:
    app = Litestar([locked, broken], exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
    with TestClient(app) as client:
        busy = client.get("/locked")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "service_unavailable"
        assert busy.json()["error"]["code"] == "store_busy"
        other = client.get("/broken")
        assert other.status_code == 500
        assert other.json()["error"]["type"] == "api_error"
        for resp in (busy, other):
            assert "Traceback" not in resp.text and "sqlite" not in resp.text.lower()


def test_the_api_document_tells_clients_every_write_may_be_told_to_retry(env: Env) -> None:
    spec = env.client.get("/openapi.json").json()
    feedback = spec["paths"]["/v1/chat/completions/{completion_id}/feedback"]
    assert "503" in feedback["post"]["responses"]
    assert "store_busy" in feedback["post"]["responses"]["503"]["description"]
    assert "503" not in feedback["get"]["responses"]  # a read never waits for the write lock
    writes = [op for path in spec["paths"].values() for m, op in path.items() if m != "get"]
    assert writes and all("503" in op["responses"] for op in writes)


async def a_read_left_open(store: Store) -> aiosqlite.Cursor:
    """Three tenants, and a read of them stepped once: it holds a read snapshot on the store's
    shared connection until it is finished (more rows to come)."""
    for i in range(3):
        await store.create_tenant(f"ten_{i}", f"t{i}")
    reading: aiosqlite.Cursor = await store.db.execute("SELECT id FROM tenants")  # type: ignore[attr-defined]
    assert await reading.fetchone() is not None
    return reading


async def test_a_write_waits_out_its_own_connections_stale_read_snapshot(tmp_path: Path) -> None:
    """The kill -9 test's flake: a read still open on the gateway's connection while another
    process (the evals worker) commits makes SQLite refuse the next BEGIN IMMEDIATE at once
    (SQLITE_BUSY_SNAPSHOT: the busy timeout does not apply). The write waits for the read to end
    and goes through, for capture batches and transactions alike."""
    path = tmp_path / "loopgate.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        reading = await a_read_left_open(store)
        other = sqlite3.connect(path, isolation_level=None)  # another process commits meanwhile
        other.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_x', 'x', 0)")
        other.close()

        async def finish_the_read() -> None:
            await asyncio.sleep(0.3)
            await reading.fetchall()
            await reading.close()

        ended = asyncio.create_task(finish_the_read())
        await store.create_tenant("ten_9", "t9")  # refused at once before the fix
        await ended
        assert (await store.get_tenant("t9")) is not None and await store.get_tenant("x")
    finally:
        await store.close()


async def test_a_capture_batch_waits_while_another_process_writes_during_a_read(
    tmp_path: Path,
) -> None:
    """With a read open on the connection, another process's write lock is refused at once
    (SQLITE_BUSY, no busy timeout, which could deadlock): the batch waits for both to end."""
    path = tmp_path / "loopgate.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        reading = await a_read_left_open(store)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # holds the write lock

        async def let_go() -> None:
            await asyncio.sleep(0.3)
            other.execute("COMMIT")
            other.close()
            await reading.fetchall()
            await reading.close()

        ended = asyncio.create_task(let_go())
        await store.capture_batch([], [])  # refused at once before the fix
        await ended
    finally:
        await store.close()


async def test_a_capture_batch_waits_out_a_stale_read_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "loopgate.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        reading = await a_read_left_open(store)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_x', 'x', 0)")
        other.close()

        async def finish_the_read() -> None:
            await asyncio.sleep(0.3)
            await reading.fetchall()
            await reading.close()

        ended = asyncio.create_task(finish_the_read())
        await store.capture_batch([], [])
        await ended
    finally:
        await store.close()
