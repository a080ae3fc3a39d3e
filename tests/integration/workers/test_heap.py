"""The serving process's garbage collector (gateway.heap), on a real `loopgate serve` process
against the mock engine: start-up's heap is settled before the first request, so 2,000 captured
requests run no full collection and almost no young one (CPython's defaults ran ~300 young and
~2 full collections of the whole heap for as many requests)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    Stack,
    add_tenants,
    mock_engine_env,
    start_gateway,
    stop_gateway,
)
from tests.support.mock_engine import mock_engine

REQUESTS = 2000
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "hi, I am Ann"}]}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with mock_engine(chunks=8, delay_ms=0) as engine:
        s = start_gateway(tmp_path, mock_engine_env(engine.url))
        try:
            add_tenants(s, "acme")
            yield s
        finally:
            stop_gateway(s)


def collections(stack: Stack) -> dict[str, float]:
    """python_gc_collections_total by generation, from the gateway's /metrics."""
    text = httpx.get(stack.url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name == "python_gc_collections":
            return {s.labels["generation"]: s.value for s in family.samples}
    raise AssertionError("python_gc_collections_total is not in /metrics")


async def serve(stack: Stack, count: int, concurrency: int = 32) -> None:
    headers = {"Authorization": f"Bearer {stack.keys['acme']}"}
    left = iter(range(count))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=60) as c:
            for _ in left:
                r = await c.post("/v1/chat/completions", json=BODY)
                assert r.status_code == 200, r.text

    await asyncio.gather(*(client() for _ in range(concurrency)))


def test_serving_settles_the_heap_and_runs_no_full_collection(stack: Stack) -> None:
    asyncio.run(serve(stack, 200))  # connections, caches and the capture writer warmed up
    before = collections(stack)
    asyncio.run(serve(stack, REQUESTS))
    after = collections(stack)
    ran = {generation: after[generation] - before[generation] for generation in after}
    assert ran["2"] == 0, ran
    assert ran["0"] <= 5, ran
