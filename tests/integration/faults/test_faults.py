"""Upstream faults with real processes: a `loopgate serve` gateway in front of mock engines
(tests.support.mock_engine) that are killed, restarted, slow, or left by their clients.

- engine killed at random points of 60 streams: every stream ends with [DONE] or with one
  error event (never both, never a fake [DONE]); the cut ones are stored as incomplete
- engine slower than the first-token / total timeout: 504, stored as an error
- one of two replicas down: requests not yet started fail over, 0 errors; its circuit opens,
  and closes again after a half-open probe once it is back
- a client that leaves mid-stream: the engine sees its request closed within 2 s
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Stack, add_tenants, start_gateway, stop_gateway
from tests.support.mock_engine import MockEngine, mock_engine

DONE = b"data: [DONE]\n\n"


def serve(tmp_path: Path, engines: list[MockEngine], **settings: object) -> Stack:
    env = {
        "LOOPGATE_ENGINE_MODE": "external",
        "LOOPGATE_ENGINE_URLS": ",".join(e.url for e in engines),
        "LOOPGATE_SERVED_MODEL_NAME": "mock",
        "LOOPGATE_LOG_LEVEL": "warning",
        **{f"LOOPGATE_{k.upper()}": str(v) for k, v in settings.items()},
    }
    stack = start_gateway(tmp_path, env)
    add_tenants(stack, "acme")
    return stack


def body(i: int, *, stream: bool) -> dict[str, object]:
    return {
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"request {i}"}],
        "stream": stream,
    }


@dataclass
class Outcome:
    status: int
    data: bytes

    @property
    def events(self) -> list[bytes]:
        return [e for e in self.data.split(b"\n\n") if e]

    @property
    def completion_id(self) -> str:
        return str(json.loads(self.events[0][6:])["id"])


async def stream_one(client: httpx.AsyncClient, key: str, i: int) -> Outcome:
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream(
        "POST", "/v1/chat/completions", json=body(i, stream=True), headers=headers
    ) as resp:
        data = b"".join([chunk async for chunk in resp.aiter_raw()])
        return Outcome(resp.status_code, data)


Rows = dict[str, tuple[str, str | None]]  # completion id → (status, backend)


def rows(data_dir: Path) -> Rows:
    con = sqlite3.connect(data_dir / "loopgate.db")
    try:
        found = con.execute("SELECT id, status, backend FROM completions")
        return {r[0]: (r[1], r[2]) for r in found}
    finally:
        con.close()


def settled(data_dir: Path, ids: list[str], timeout_s: float = 10) -> Rows:
    """The rows of `ids` once none is in progress any more (the gateway finalises them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = rows(data_dir)
        if all(found.get(i, ("in_progress",))[0] != "in_progress" for i in ids):
            return found
        assert time.monotonic() < deadline, "rows still in progress"
        time.sleep(0.1)


def metric(stack: Stack, name: str, **labels: str) -> float:
    text = httpx.get(stack.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_engine_killed_at_random_points_of_60_streams(tmp_path: Path) -> None:
    rng = random.Random(20261202)
    with mock_engine(chunks=300, delay_ms=6) as engine:  # a stream takes about 2 s
        stack = serve(tmp_path, [engine], engine_health_interval_s=0.5, engine_ready_wait_s=15)
        key = stack.keys["acme"]

        async def round_of(n: int, kill_after_s: float) -> list[Outcome]:
            async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:

                async def started_later(i: int) -> Outcome:
                    await asyncio.sleep(0.02 * i)
                    return await stream_one(client, key, i)

                tasks = [asyncio.create_task(started_later(i)) for i in range(n)]
                await asyncio.sleep(kill_after_s)
                engine.kill()
                return list(await asyncio.gather(*tasks))

        outcomes: list[Outcome] = []
        try:
            for _ in range(5):
                outcomes += asyncio.run(round_of(12, rng.uniform(0.4, 1.6)))
                engine.start()  # the same port: the gateway's health check sees it back
                stack.wait_ready(timeout_s=30)
            cut, finished = [], []
            for o in outcomes:
                assert o.status == 200, (o.status, o.data[:300])  # all began before the kill
                events = o.events
                if events[-1] + b"\n\n" == DONE:
                    assert not any(b'"error"' in e for e in events)
                    finished.append(o)
                    continue
                assert DONE not in o.data  # never a fake [DONE] after a failure
                last = json.loads(events[-1][6:])
                assert last["error"]["type"] == "upstream_error", last
                assert sum(b'"error"' in e for e in events) == 1
                cut.append(o)
            assert len(cut) >= 50, (len(cut), len(finished))
            found = settled(tmp_path, [o.completion_id for o in outcomes])
            assert all(found[o.completion_id][0] == "incomplete" for o in cut)
            assert all(found[o.completion_id][0] == "complete" for o in finished)
            print(f"\nengine killed 5 times: {len(cut)} streams cut, {len(finished)} finished")
        finally:
            stop_gateway(stack)


def test_engine_slower_than_the_timeouts_gets_504(tmp_path: Path) -> None:
    with mock_engine(chunks=4, delay_ms=0, first_delay_ms=4000) as engine:
        stack = serve(
            tmp_path,
            [engine],
            upstream_first_token_timeout_s=1,
            upstream_total_timeout_s=1.5,
            breaker_failures=100,
        )
        headers = {"Authorization": f"Bearer {stack.keys['acme']}"}
        try:
            with httpx.Client(base_url=stack.url, timeout=30, headers=headers) as client:
                for stream in (True, False):
                    started = time.monotonic()
                    resp = client.post("/v1/chat/completions", json=body(1, stream=stream))
                    took = time.monotonic() - started
                    assert resp.status_code == 504, resp.text
                    assert resp.json()["error"]["type"] == "timeout_error"
                    assert 0.9 < took < 3.5, took
            statuses = [status for status, _ in rows(tmp_path).values()]
            assert statuses == ["error", "error"]
        finally:
            stop_gateway(stack)


def test_one_replica_down_fails_over_and_its_circuit_opens_then_closes(tmp_path: Path) -> None:
    with mock_engine(chunks=8, delay_ms=2) as a, mock_engine(chunks=8, delay_ms=2) as b:
        stack = serve(
            tmp_path,
            [a, b],
            engine_health_interval_s=3600,  # the gateway learns only from failed requests
            breaker_failures=2,
            breaker_cooldown_s=1,
        )
        key = stack.keys["acme"]

        async def traffic(n: int) -> list[int]:
            async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
                headers = {"Authorization": f"Bearer {key}"}

                async def one(i: int) -> int:
                    if i % 2:
                        resp = await client.post(
                            "/v1/chat/completions", json=body(i, stream=False), headers=headers
                        )
                        return resp.status_code
                    o = await stream_one(client, key, i)
                    return o.status if o.data.endswith(DONE) else -1

                return list(await asyncio.gather(*(one(i) for i in range(n))))

        try:
            assert set(asyncio.run(traffic(20))) == {200}
            assert int(a.stats()["requests"]) > 0 and int(b.stats()["requests"]) > 0
            on_a = sum(backend == "replica-0" for _, backend in rows(tmp_path).values())
            a.kill()
            statuses = asyncio.run(traffic(40))  # concurrent: several hit the dead replica
            assert statuses.count(200) == 40, statuses
            assert metric(stack, "loopgate_replica_circuit_open", backend="replica-0") == 1
            # every one of the 40 is stored as served by replica-1, retried ones included
            assert sum(backend == "replica-0" for _, backend in rows(tmp_path).values()) == on_a
            assert "retrying on replica-1" in stack.log_path.read_text()

            a.start()
            time.sleep(1.2)  # past the cooldown: the next request is the half-open probe
            assert set(asyncio.run(traffic(10))) == {200}
            assert metric(stack, "loopgate_replica_circuit_open", backend="replica-0") == 0
            assert int(a.stats()["requests"]) > 0  # the restarted replica serves again
        finally:
            stop_gateway(stack)


def test_client_leaving_mid_stream_aborts_the_engine_request_within_2s(tmp_path: Path) -> None:
    with mock_engine(chunks=500, delay_ms=20) as engine:  # 10 s unless aborted
        stack = serve(tmp_path, [engine])
        headers = {"Authorization": f"Bearer {stack.keys['acme']}"}
        try:
            for attempt in range(3):
                request = body(attempt, stream=True)
                with (
                    httpx.Client(base_url=stack.url, timeout=30, headers=headers) as client,
                    client.stream("POST", "/v1/chat/completions", json=request) as resp,
                ):
                    for n, _ in enumerate(resp.iter_raw()):
                        if n == 3:
                            break
                    left_at = time.time()
                deadline = time.monotonic() + 5
                while len(aborted := list(engine.stats()["aborted_at"])) <= attempt:  # type: ignore[call-overload]
                    assert time.monotonic() < deadline, "the engine never saw the request go away"
                    time.sleep(0.05)
                took = aborted[attempt] - left_at
                print(f"\nclient left → engine request closed in {took * 1000:.0f} ms")
                assert took < 2.0
        finally:
            stop_gateway(stack)
