"""A swap across two replicas when one of them is stuck: the promotion goes ahead on the healthy
one, says which replica it left out and why, and reconciliation catches the other up later."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from tests.support.polling import until
from tests.support.polling import until as wait_for
from tests.unit.adapter_files import pack, write_adapter
from tests.unit.conftest import ADMIN, make_settings
from tests.unit.fake_engine import FakeEngine

HOSTS = ("r0.test", "r1.test")
CHAT = {"model": "support", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Fleet:
    """Two fake replicas behind one transport; a host in `stuck` hangs on the given paths
    (its /health still answers, as a vLLM whose engine loop is stalled does) for a minute or
    until `unstick`. `hanging` lists the (host, path) of every request that is hanging now."""

    engines: dict[str, FakeEngine] = field(default_factory=lambda: {h: FakeEngine() for h in HOSTS})
    stuck: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hanging: list[tuple[str, str]] = field(default_factory=list)
    unstuck: threading.Event = field(default_factory=threading.Event)  # set from the test

    async def handle(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        if path in self.stuck.get(host, ()):
            self.hanging.append((host, path))
            try:  # the stall itself (the behaviour), ended early only by `unstick`
                await until(self.unstuck.is_set, "", timeout_s=60)
            except AssertionError:
                pass  # stalled for the whole minute
            finally:
                self.hanging.remove((host, path))
        return self.engines[host].handle(request)

    def unstick(self) -> None:
        self.stuck.clear()
        self.unstuck.set()


@dataclass
class Env:
    client: AsyncTestClient  # type: ignore[type-arg]
    fleet: Fleet
    key: str
    version: str

    async def promote(self) -> httpx.Response:
        body = {"version": self.version, "force": True, "reason": "test"}
        return await self.client.post(
            "/admin/tenants/acme/aliases/support/promote", json=body, headers=ADMIN
        )

    async def chat(self) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return await self.client.post("/v1/chat/completions", json=CHAT, headers=headers)


async def start(
    tmp_path: Path, fleet: Fleet, reconcile_s: float, admin_timeout_s: float = 0.3
) -> AsyncIterator[Env]:
    settings = make_settings(
        tmp_path,
        engine_urls=tuple(f"http://{h}" for h in HOSTS),
        adapter_admin_timeout_s=admin_timeout_s,
        engine_health_interval_s=0.05,
        reconcile_interval_s=reconcile_s,
    )
    app = create_app(settings, transport=httpx.MockTransport(fleet.handle))
    async with AsyncTestClient(app) as client:
        await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
        key = (await client.post("/admin/tenants/acme/keys", json={}, headers=ADMIN)).json()["key"]
        data = pack(write_adapter(tmp_path / "a1", seed=1))
        resp = await client.post("/admin/tenants/acme/adapters", content=data, headers=ADMIN)
        assert resp.status_code == 201, resp.text
        deadline = time.monotonic() + 5
        while (await client.get("/ready")).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        yield Env(client, fleet, key, resp.json()["id"])


@pytest.fixture
async def quick(tmp_path: Path) -> AsyncIterator[Env]:
    async for env in start(tmp_path, Fleet(), reconcile_s=0.2):
        yield env


@pytest.fixture
async def slow(tmp_path: Path) -> AsyncIterator[Env]:
    async for env in start(tmp_path, Fleet(), reconcile_s=3600):
        yield env


@pytest.fixture
async def patient(tmp_path: Path) -> AsyncIterator[Env]:
    """Frequent reconciliation, and 30 s before a stuck replica's admin call gives up."""
    async for env in start(tmp_path, Fleet(), reconcile_s=0.2, admin_timeout_s=30):
        yield env


async def test_a_replica_stuck_loading_is_left_out_then_caught_up(quick: Env) -> None:
    r0, r1 = (quick.fleet.engines[h] for h in HOSTS)
    quick.fleet.stuck["r1.test"] = ("/v1/load_lora_adapter",)
    started = time.monotonic()
    resp = await quick.promote()
    assert resp.status_code == 200, resp.text
    assert time.monotonic() - started < 10  # bounded by the admin timeout, not the read timeout
    report = resp.json()
    assert report["replicas"] == ["replica-0"]
    (note,) = report["left_out"]
    assert note.startswith("replica-1:") and "did not answer /v1/load_lora_adapter" in note
    assert len(r0.loras) == 1 and r1.loras == {}
    for _ in range(4):
        served = await quick.chat()
        assert served.status_code == 200, served.text
        assert served.headers["x-loopgate-adapter-version"] == quick.version
    assert all(b["model"] in r0.loras for b in r0.bodies())
    quick.fleet.stuck.clear()  # the replica recovers: reconciliation loads the live version
    await wait_for(lambda: len(r1.loras) == 1, "the live version never reached replica-1")
    (name,) = r1.loras
    assert name.endswith(quick.version) and name not in r0.loras


async def test_a_replica_whose_probe_hangs_is_left_out_and_unloaded(slow: Env) -> None:
    r0, r1 = (slow.fleet.engines[h] for h in HOSTS)
    slow.fleet.stuck["r1.test"] = ("/v1/completions",)  # the probe
    resp = await slow.promote()
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["replicas"] == ["replica-0"]
    (note,) = report["left_out"]
    assert note.startswith("replica-1:") and "probe" in note and "no answer" in note
    await wait_for(lambda: r1.loras == {}, "the placement on replica-1 was not unloaded")
    assert len(r0.loras) == 1
    assert [action for action, _ in r1.lora_log] == ["load", "unload"]
    for _ in range(4):  # every request goes to replica-0 (one to replica-1 would hang)
        served = await asyncio.wait_for(slow.chat(), 5)
        assert served.status_code == 200 and served.headers["x-loopgate-adapter-version"] == (
            slow.version
        )


async def test_when_every_replica_is_stuck_nothing_is_promoted(slow: Env) -> None:
    for host in HOSTS:
        slow.fleet.stuck[host] = ("/v1/load_lora_adapter",)
    resp = await slow.promote()
    assert resp.status_code == 502, resp.text
    assert "did not answer /v1/load_lora_adapter" in resp.json()["error"]["message"]
    history = await slow.client.get("/admin/tenants/acme/aliases/support/history", headers=ADMIN)
    assert history.json() == []  # the alias never flipped
    assert (await slow.chat()).status_code == 404


async def test_a_reconcile_pass_stuck_on_one_replica_delays_no_health_check(patient: Env) -> None:
    patient.fleet.stuck["r1.test"] = ("/v1/models",)  # every reconcile of replica-1 hangs
    await wait_for(
        lambda: ("r1.test", "/v1/models") in patient.fleet.hanging,
        "no reconcile pass reached replica-1",
    )
    r0 = patient.client.app.state.gateway.pool.backends[0]
    assert r0.name == "replica-0" and r0.ready
    patient.fleet.engines["r0.test"].healthy = False
    await wait_for(lambda: not r0.ready, "replica-0 going down went unnoticed", timeout_s=2)
    patient.fleet.engines["r0.test"].healthy = True
    await wait_for(lambda: r0.ready, "replica-0 coming back went unnoticed", timeout_s=2)


async def test_the_alias_flips_at_the_first_replica_ready_and_the_other_joins_later(
    patient: Env,
) -> None:
    """replica-1 is slow to answer its probe: the alias serves the new version from replica-0
    before the promote answers; replica-1 takes no request until its own probe answers."""
    r0, r1 = (patient.fleet.engines[h] for h in HOSTS)
    patient.fleet.stuck["r1.test"] = ("/v1/completions",)  # the probe
    # The test client blocks its caller's loop until the app answers: promote from a thread.
    promoting = asyncio.create_task(asyncio.to_thread(asyncio.run, patient.promote()))
    await wait_for(
        lambda: ("r1.test", "/v1/completions") in patient.fleet.hanging,
        "replica-1's probe never started",
    )
    deadline = time.monotonic() + 5
    while (served := await asyncio.wait_for(patient.chat(), 5)).status_code == 404:
        assert time.monotonic() < deadline, "the alias never flipped"
        await asyncio.sleep(0.01)
    assert served.headers["x-loopgate-adapter-version"] == patient.version
    assert not promoting.done()  # still waiting for replica-1's probe
    detail = await patient.client.get(
        f"/admin/tenants/acme/adapters/{patient.version}", headers=ADMIN
    )
    states = {p["backend"]: p["state"] for p in detail.json()["placements"]}
    assert states == {"replica-0": "ready", "replica-1": "probing"}
    for _ in range(4):  # a request routed to replica-1 would hang here
        served = await asyncio.wait_for(patient.chat(), 5)
        assert served.headers["x-loopgate-adapter-version"] == patient.version
    assert r1.bodies() == []  # nothing but the hanging probe was sent to replica-1
    patient.fleet.unstick()
    report = (await promoting).json()
    assert report["replicas"] == ["replica-0", "replica-1"] and report["left_out"] == []
    assert 0 < report["flipped_after_s"] < 5
    assert len(r0.loras) == 1 and len(r1.loras) == 1
