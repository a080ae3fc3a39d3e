"""Capture durability with a real gateway process in front of a mock engine: kill -9 in the
middle of 1,200 requests, and SIGTERM with streams in flight."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path

import httpx

from tests.integration.conftest import Stack, add_tenants, start_gateway, stop_gateway
from tests.support.mock_engine import mock_engine
from tests.support.polling import until


def gateway(data_dir: Path, engine_url: str) -> Stack:
    return start_gateway(
        data_dir,
        {
            "LOOPGATE_ENGINE_MODE": "external",
            "LOOPGATE_ENGINE_URLS": engine_url,
            "LOOPGATE_SERVED_MODEL_NAME": "mock",
            "LOOPGATE_LOG_LEVEL": "warning",
        },
    )


def db_rows(data_dir: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(data_dir / "loopgate.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return [(r[0], r[1]) for r in con.execute("SELECT id, status FROM completions")]


async def one(client: httpx.AsyncClient, key: str, i: int) -> str:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"request {i}"}],
        "stream": i % 2 == 0,
    }
    headers = {"Authorization": f"Bearer {key}"}
    if not body["stream"]:
        resp = await client.post("/v1/chat/completions", json=body, headers=headers)
        resp.raise_for_status()
        return str(resp.json()["id"])
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
        resp.raise_for_status()
        data = b"".join([chunk async for chunk in resp.aiter_raw()])
    assert data.endswith(b"data: [DONE]\n\n"), data[-200:]
    return str(json.loads(data.split(b"\n\n")[0][6:])["id"])


def test_kill_9_during_1200_requests_loses_nothing_that_returned(tmp_path: Path) -> None:
    with mock_engine(chunks=4, delay_ms=20) as engine:
        stack = gateway(tmp_path, engine.url)
        add_tenants(stack, "acme")
        key = stack.keys["acme"]
        returned: list[str] = []
        failed = 0

        async def run() -> None:
            nonlocal failed
            limits = httpx.Limits(max_connections=32)
            async with httpx.AsyncClient(base_url=stack.url, limits=limits, timeout=30) as client:
                gate = asyncio.Semaphore(32)

                async def bounded(i: int) -> None:
                    nonlocal failed
                    async with gate:
                        try:
                            returned.append(await one(client, key, i))
                        except (httpx.HTTPError, AssertionError, json.JSONDecodeError):
                            failed += 1
                        if len(returned) == 400:
                            os.kill(stack.proc.pid, signal.SIGKILL)  # mid-flight, no warning

                await asyncio.gather(*(bounded(i) for i in range(1200)))

        asyncio.run(run())
        stack.proc.wait(timeout=30)
        assert len(returned) >= 400 and failed > 0, (len(returned), failed)
        before = dict(db_rows(tmp_path))
        assert len(before) == len(db_rows(tmp_path))  # ids are unique (primary key)
        for cid in returned:
            assert before.get(cid) == "complete", (cid, before.get(cid))
        restarted = gateway(tmp_path, engine.url)  # start-up marks the leftovers incomplete
        try:
            after = dict(db_rows(tmp_path))
        finally:
            stop_gateway(restarted)
        assert set(after.values()) <= {"complete", "incomplete"}
        assert "incomplete" in after.values()  # requests in flight at the kill are accounted for
        assert all(after[cid] == "complete" for cid in returned)
        print(
            f"\nkill -9: {len(returned)} returned, {failed} failed, {len(after)} rows "
            f"({sum(v == 'incomplete' for v in after.values())} incomplete)"
        )


def test_sigterm_drains_streams_and_flushes_every_row(tmp_path: Path) -> None:
    with mock_engine(chunks=40, delay_ms=50) as engine:  # each stream takes about 2 s
        stack = gateway(tmp_path, engine.url)
        add_tenants(stack, "acme")
        key = stack.keys["acme"]

        async def run() -> list[str]:
            async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
                streams = [asyncio.create_task(one(client, key, 2 * i)) for i in range(20)]
                await until(  # the engine has all 20: each is mid-stream now (for about 2 s)
                    lambda: engine.stats()["requests"] >= 20, "the streams never reached the engine"
                )
                stack.proc.send_signal(signal.SIGTERM)
                return list(await asyncio.gather(*streams))

        ids = asyncio.run(run())
        assert stack.proc.wait(timeout=60) == 0
        rows = dict(db_rows(tmp_path))
        assert len(ids) == 20 and all(rows[cid] == "complete" for cid in ids)
        assert "in_progress" not in rows.values()
