"""What keeps a swap short under load: a one-token probe ahead of live traffic, a staged
placement that takes no lease before its probe, and the old version drained after the answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from adapters.placement import AdapterPool, LoadState
from gateway.app import create_app
from gateway.runtime import Gateway
from replicas.pool import Backend, BackendPool
from store import AdapterVersion
from tests.support.polling import until
from tests.unit.adapter_files import pack, write_adapter
from tests.unit.conftest import ADMIN, Env, make_settings
from tests.unit.fake_engine import FakeEngine
from tests.unit.test_adapters_api import promote, upload


def probes(engine: FakeEngine) -> list[dict[str, object]]:
    """The swap's probes: the only requests sent to an engine name (lg-...) by nobody else."""
    return [b for b in engine.bodies() if str(b["model"]).startswith("lg-")]


def test_the_probe_is_one_token_ahead_of_live_traffic(env: Env, tmp_path: Path) -> None:
    v1 = upload(env, tmp_path, 1)
    promote(env, str(v1["id"]))
    (probe,) = probes(env.engine)
    assert probe["max_tokens"] == 1 and probe["temperature"] == 0
    assert probe["priority"] == -10  # live requests run at vLLM's default 0, batch lines at 10
    # A raw one-word prompt: no chat template, so the probe's own prefill is one token.
    assert probe["prompt"] == "Hello" and "messages" not in probe
    assert env.engine.requests[-1].url.path == "/v1/completions"
    live = env.client.post(
        "/v1/chat/completions",
        json={"model": "support", "messages": [{"role": "user", "content": "hi"}]},
        headers=env.auth(),
    )
    assert live.status_code == 200 and "priority" not in env.engine.bodies()[-1]


@pytest.mark.parametrize("answer", ["not json", '{"choices": []}', '{"choices": ["text"]}'])
def test_a_probe_answer_without_a_choice_refuses_the_promotion(
    env: Env, tmp_path: Path, answer: str
) -> None:
    v1 = upload(env, tmp_path, 1)
    env.engine.custom = lambda request: httpx.Response(200, text=answer)
    resp = env.client.post(
        "/admin/tenants/acme/aliases/support/promote",
        json={"version": v1["id"], "reason": "test", "force": True},
        headers=ADMIN,
    )
    assert resp.status_code == 422, resp.text
    assert "answered without a choice" in resp.json()["error"]["message"]
    assert (
        env.client.get("/admin/tenants/acme/aliases/support/history", headers=ADMIN).json() == []
    )  # the alias never flipped


@pytest.mark.parametrize("overrides", [{"engine_scheduling_policy": "fcfs"}])
def test_an_fcfs_engine_gets_no_priority(env: Env, tmp_path: Path) -> None:
    v1 = upload(env, tmp_path, 1)
    promote(env, str(v1["id"]))
    (probe,) = probes(env.engine)
    assert probe["max_tokens"] == 1 and "priority" not in probe


@dataclass
class Live:
    client: AsyncTestClient  # type: ignore[type-arg]
    engine: FakeEngine
    gateway: Gateway
    versions: list[str]

    async def promote(self, version: str) -> dict[str, object]:
        resp = await self.client.post(
            "/admin/tenants/acme/aliases/support/promote",
            json={"version": version, "force": True, "reason": "test"},
            headers=ADMIN,
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    engine = FakeEngine()
    app = create_app(make_settings(tmp_path), transport=engine.transport())
    async with AsyncTestClient(app) as client:
        await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
        versions = []
        for seed in (1, 2):
            data = pack(write_adapter(tmp_path / f"v{seed}", seed=seed))
            resp = await client.post("/admin/tenants/acme/adapters", content=data, headers=ADMIN)
            versions.append(resp.json()["id"])
        yield Live(client, engine, app.state.gateway, versions)


async def test_the_old_version_drains_after_the_promote_answered(live: Live) -> None:
    v1, v2 = live.versions
    await live.promote(v1)
    # A request still running on v1 (taken, and later ended, on the app's own loop).
    streaming = live.client.blocking_portal.call(lambda: live.gateway.adapters.try_lease(v1))
    assert streaming is not None
    report = await live.promote(v2)
    assert report["drained"] is False  # answered without waiting for the stream
    old = streaming.engine_name
    assert old in live.engine.loras and streaming.placement is not None
    assert streaming.placement.state is LoadState.DRAINING
    assert live.gateway.adapters.try_lease(v1) is None  # no new request reaches v1
    detail = await live.client.get(f"/admin/tenants/acme/adapters/{v1}", headers=ADMIN)
    assert detail.json()["version"]["status"] == "retired"
    live.client.blocking_portal.call(streaming.release)
    await until(lambda: old not in live.engine.loras, "v1 was not unloaded after its drain")
    (name,) = live.engine.loras
    assert name.endswith(v2)


async def test_with_nothing_in_flight_the_old_version_is_gone_on_answer(live: Live) -> None:
    v1, v2 = live.versions
    await live.promote(v1)
    report = await live.promote(v2)
    assert report["drained"] is True and report["flipped_after_s"] > 0
    (name,) = live.engine.loras
    assert name.endswith(v2)


def version(n: int) -> AdapterVersion:
    return AdapterVersion(
        f"av-{n}", "t", "v", f"h{n}", "b", "", 8, 16.0, ("q_proj",), "test", "candidate",
        f"/adapters/{n}", 1, time.time(),
    )  # fmt: skip


async def test_a_staged_placement_takes_no_lease_until_admitted() -> None:
    engine = FakeEngine()
    backend = Backend("http://engine.test", "", "r0", ready=True)
    async with httpx.AsyncClient(transport=engine.transport()) as client:
        pool = AdapterPool(BackendPool([backend]), client, capacity=2)
        staged = await pool.stage(backend, version(1))
        assert staged.state is LoadState.PROBING and staged.pinned
        assert pool.try_lease("av-1") is None
        # reconciliation (or a second swap) asking for it meanwhile gets the same placement
        assert await pool.load(backend, version(1), pinned=True) is staged
        assert [op for op, _ in engine.lora_log] == ["load"]
        pool.admit(staged)
        lease = pool.try_lease("av-1")
        assert lease is not None and lease.placement is staged
