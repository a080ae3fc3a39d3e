"""Limits with real processes: two `loopgate serve` sharing one PostgreSQL hold one RPM limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ADMIN_KEY, Stack, add_tenants, start_gateway, stop_gateway
from tests.support.mock_engine import mock_engine
from tests.support.postgres import PostgresServer, postgres_server

RPM = 5


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def gateways(pg: PostgresServer, tmp_path: Path) -> Iterator[list[Stack]]:
    url = asyncio.run(pg.create_database())
    stacks: list[Stack] = []
    with mock_engine(chunks=2, delay_ms=0) as engine:
        env = {
            "LOOPGATE_ENGINE_MODE": "external",
            "LOOPGATE_ENGINE_URLS": engine.url,
            "LOOPGATE_SERVED_MODEL_NAME": "mock",
            "LOOPGATE_LOG_LEVEL": "warning",
            "LOOPGATE_DATABASE_URL": url,
        }
        try:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                stacks.append(start_gateway(tmp_path / name, env))
            yield stacks
        finally:
            for stack in stacks:
                stop_gateway(stack)
    asyncio.run(pg.drop_database(url))


def wait_for_a_fresh_minute(needed_s: float) -> None:
    """Fixed windows: start where the whole burst fits in one minute."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.5)


async def burst(stacks: list[Stack], key: str, count: int) -> list[tuple[int, int]]:
    """`count` simultaneous requests, alternating between the gateways: (gateway, status)."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.AsyncClient(base_url=s.url, timeout=60) for s in stacks]
    try:
        responses = await asyncio.gather(
            *(
                clients[i % 2].post("/v1/chat/completions", json=body, headers=headers)
                for i in range(count)
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            assert r.headers["x-ratelimit-limit-requests"] == str(RPM)
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
            assert int(r.headers["retry-after"]) >= 1
    return [(i % 2, r.status_code) for i, r in enumerate(responses)]


def test_an_rpm_limit_holds_across_two_gateways_sharing_postgres(gateways: list[Stack]) -> None:
    a, b = gateways
    add_tenants(a, "acme", "globex")  # created through one gateway, used through both
    admin = httpx.Client(base_url=b.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    with admin:
        put = admin.put("/admin/tenants/acme/limits", json={"requests_per_minute": RPM})
        assert put.status_code == 200, put.text
    wait_for_a_fresh_minute(needed_s=20)
    started = int(time.time() // 60)
    results = asyncio.run(burst(gateways, a.keys["acme"], 40))
    others = asyncio.run(burst(gateways, a.keys["globex"], 10))
    assert int(time.time() // 60) == started  # wait_for_a_fresh_minute left 20 s for this
    statuses = sorted(status for _, status in results)
    assert statuses == [200] * RPM + [429] * (40 - RPM), statuses
    assert {g for g, status in results if status == 429} == {0, 1}  # both gateways refused
    assert [status for _, status in others] == [200] * 10  # another tenant is not starved
