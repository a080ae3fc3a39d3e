"""Registry, promote/rollback and placements through the admin API, against a fake engine."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from tests.support.polling import until_sync
from tests.unit.adapter_files import pack, write_adapter
from tests.unit.conftest import ADMIN, Env

CHAT = {"model": "support", "messages": [{"role": "user", "content": "hi"}]}


def upload(
    env: Env, tmp_path: Path, seed: int, tenant: str = "acme", **kw: object
) -> dict[str, object]:
    data = pack(write_adapter(tmp_path / f"a{seed}", seed=seed, **kw))  # type: ignore[arg-type]
    resp = env.client.post(
        f"/admin/tenants/{tenant}/adapters?name=style{seed}",
        content=data,
        headers={**ADMIN, "content-type": "application/gzip"},
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def promote(
    env: Env, version: str, tenant: str = "acme", alias: str = "support"
) -> dict[str, object]:
    resp = env.client.post(
        f"/admin/tenants/{tenant}/aliases/{alias}/promote",
        json={"version": version, "reason": "test", "force": True},
        headers=ADMIN,
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_upload_is_content_addressed_and_idempotent(env: Env, tmp_path: Path) -> None:
    first = upload(env, tmp_path, 1)
    again = upload(env, tmp_path, 1)
    other = upload(env, tmp_path, 2)
    assert first["id"] == again["id"] != other["id"]
    assert first["status"] == "candidate" and first["rank"] == 8
    assert first["target_modules"] == ["q_proj", "v_proj"]
    assert first["created_by"].startswith("upload:")
    stored = Path(str(first["path"]))
    assert sorted(p.name for p in stored.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    listed = env.client.get("/admin/tenants/acme/adapters", headers=ADMIN).json()["data"]
    assert {a["id"] for a in listed} == {first["id"], other["id"]}
    assert env.client.get("/admin/tenants/globex/adapters", headers=ADMIN).json()["data"] == []


def test_promote_serves_the_adapter_under_the_alias(env: Env, tmp_path: Path) -> None:
    v1 = upload(env, tmp_path, 1)
    report = promote(env, str(v1["id"]))
    assert report["from_version"] is None and report["to_version"] == v1["id"]
    (engine_name,) = env.engine.loras
    assert engine_name.startswith("lg-") and engine_name.endswith(str(v1["id"]))
    resp = env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth())
    assert resp.status_code == 200
    assert resp.json()["model"] == "support"
    assert resp.headers["x-loopgate-adapter-version"] == v1["id"]
    assert env.engine.bodies()[-1]["model"] == engine_name
    models = {m["id"]: m for m in env.client.get("/v1/models", headers=env.auth()).json()["data"]}
    assert models["support"]["parent"] == "smollm2-135m-instruct"
    assert models["support"]["metadata"]["adapter_version"] == v1["id"]
    assert (
        env.client.get(f"/admin/tenants/acme/adapters/{v1['id']}", headers=ADMIN).json()["version"][
            "status"
        ]
        == "live"
    )
    base = env.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "smollm2"}, headers=env.auth()
    )
    assert base.headers["x-loopgate-adapter-version"] == "base"


def test_swap_and_rollback_never_reuse_engine_names(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, str(v1["id"]))
    promote(env, str(v2["id"]))
    assert len(env.engine.loras) == 1 and next(iter(env.engine.loras)).endswith(str(v2["id"]))
    back = env.client.post(
        "/admin/tenants/acme/aliases/support/rollback", json={"reason": "bad"}, headers=ADMIN
    )
    assert back.status_code == 200 and back.json()["to_version"] == v1["id"]
    assert next(iter(env.engine.loras)).endswith(str(v1["id"]))
    loads = [name for op, name in env.engine.lora_log if op == "load"]
    assert len(loads) == 3 and len(set(loads)) == 3  # three loads, three distinct names
    assert [op for op, _ in env.engine.lora_log] == ["load", "load", "unload", "load", "unload"]
    statuses = {
        a["id"]: a["status"]
        for a in env.client.get("/admin/tenants/acme/adapters", headers=ADMIN).json()["data"]
    }
    assert statuses == {v1["id"]: "live", v2["id"]: "retired"}
    history = env.client.get("/admin/tenants/acme/aliases/support/history", headers=ADMIN).json()
    assert [(e["action"], e["from_version"], e["to_version"]) for e in history] == [
        ("promote", None, v1["id"]),
        ("promote", v1["id"], v2["id"]),
        ("rollback", v2["id"], v1["id"]),
    ]
    assert all(e["actor"] == "admin" and e["reason"] for e in history)


def test_tenants_cannot_reach_each_others_adapters(env: Env, tmp_path: Path) -> None:
    v1 = upload(env, tmp_path, 1)
    promote(env, str(v1["id"]))
    (engine_name,) = env.engine.loras
    for model in ("support", engine_name, str(v1["id"])):
        resp = env.client.post(
            "/v1/chat/completions", json={**CHAT, "model": model}, headers=env.auth(env.globex_key)
        )
        assert resp.status_code == 404
    assert "support" not in {
        m["id"]
        for m in env.client.get("/v1/models", headers=env.auth(env.globex_key)).json()["data"]
    }
    resp = env.client.post(
        "/admin/tenants/globex/aliases/support/promote", json={"version": v1["id"]}, headers=ADMIN
    )
    assert resp.status_code == 404
    assert (
        env.client.get(f"/admin/tenants/globex/adapters/{v1['id']}", headers=ADMIN).status_code
        == 404
    )
    # acme can't call its own version or the engine name directly either: only aliases
    for model in (engine_name, str(v1["id"])):
        assert (
            env.client.post(
                "/v1/chat/completions", json={**CHAT, "model": model}, headers=env.auth()
            ).status_code
            == 404
        )


def test_live_versions_cannot_be_deleted_or_retired(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, str(v1["id"]))
    assert (
        env.client.delete(f"/admin/tenants/acme/adapters/{v1['id']}", headers=ADMIN).status_code
        == 409
    )
    assert (
        env.client.post(
            f"/admin/tenants/acme/adapters/{v1['id']}/retire", headers=ADMIN
        ).status_code
        == 409
    )
    assert (
        env.client.post(f"/admin/tenants/acme/adapters/{v2['id']}/retire", headers=ADMIN).json()[
            "status"
        ]
        == "retired"
    )
    deleted = env.client.delete(f"/admin/tenants/acme/adapters/{v2['id']}", headers=ADMIN)
    assert deleted.status_code == 200 and not Path(str(v2["path"])).exists()
    again = env.client.post(
        "/admin/tenants/acme/aliases/support/promote",
        json={"version": v1["id"], "force": True, "reason": "t"},
        headers=ADMIN,
    )
    assert again.status_code == 409  # already serves it


def test_alias_set_back_to_base_unloads_the_adapter(env: Env, tmp_path: Path) -> None:
    v1 = upload(env, tmp_path, 1)
    promote(env, str(v1["id"]))
    assert (
        env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN).status_code
        == 200
    )
    assert env.engine.loras == {}
    resp = env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth())
    assert resp.headers["x-loopgate-adapter-version"] == "base"


def test_probe_failure_refuses_the_promotion(env: Env, tmp_path: Path) -> None:
    v1 = upload(env, tmp_path, 1)
    import httpx

    def refuse_adapters(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="boom")

    env.engine.custom = refuse_adapters
    resp = env.client.post(
        "/admin/tenants/acme/aliases/support/promote",
        json={"version": v1["id"], "force": True, "reason": "t"},
        headers=ADMIN,
    )
    assert resp.status_code == 422 and "probe" in resp.json()["error"]["message"]
    env.engine.custom = None
    assert env.engine.loras == {}  # the candidate was unloaded again
    assert env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth()).status_code == 404


@pytest.mark.parametrize("overrides", [{"engine_health_interval_s": 0.05}])
def test_replica_restart_is_reconciled(env: Env, tmp_path: Path) -> None:
    v1 = upload(env, tmp_path, 1)
    promote(env, str(v1["id"]))
    old_name = next(iter(env.engine.loras))
    env.engine.healthy = False
    env.engine.loras.clear()  # the replica restarted and lost its adapters
    deadline = time.monotonic() + 5
    while env.client.get("/ready").status_code == 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    env.engine.healthy = True
    while not env.engine.loras:
        assert time.monotonic() < deadline, "pinned adapter was not restored"
        time.sleep(0.05)
    (new_name,) = env.engine.loras
    assert new_name != old_name and new_name.endswith(str(v1["id"]))
    resp = env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth())
    assert resp.status_code == 200 and env.engine.bodies()[-1]["model"] == new_name


async def test_concurrent_promotes_end_in_one_consistent_state(tmp_path: Path) -> None:
    from litestar.testing import AsyncTestClient

    from gateway.app import create_app
    from store.errors import Conflict
    from tests.unit.conftest import make_settings
    from tests.unit.fake_engine import FakeEngine

    engine = FakeEngine()
    app = create_app(make_settings(tmp_path), transport=engine.transport())
    async with AsyncTestClient(app) as client:
        await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
        ids = []
        for seed in (1, 2, 3):
            data = pack(write_adapter(tmp_path / f"c{seed}", seed=seed))
            resp = await client.post("/admin/tenants/acme/adapters", content=data, headers=ADMIN)
            ids.append(resp.json()["id"])
        gw = app.state.gateway
        tenant = await gw.admin.tenant("acme")

        async def promote_one(i: int) -> str:
            try:
                await gw.swapper.promote(tenant, "support", ids[i % 3], actor="t")
            except Conflict:
                return "conflict"
            return "ok"

        results = await asyncio.gather(*(promote_one(i) for i in range(9)))
        assert "ok" in results
        history = (
            await client.get("/admin/tenants/acme/aliases/support/history", headers=ADMIN)
        ).json()
        for before, after in itertools.pairwise(history):
            assert after["from_version"] == before["to_version"]  # one unbroken chain
        final = history[-1]["to_version"]
        (name,) = engine.loras
        assert name.endswith(final)
        statuses = {
            a["id"]: a["status"]
            for a in (await client.get("/admin/tenants/acme/adapters", headers=ADMIN)).json()[
                "data"
            ]
        }
        assert [v for v, s in statuses.items() if s == "live"] == [final]


def test_a_promotion_made_on_another_gateway_reaches_this_one(tmp_path: Path) -> None:
    """Two gateways on one store: once the alias cache's TTL (+1 s) has passed, the store's
    target wins over what this gateway itself last promoted."""
    from litestar.testing import TestClient

    from gateway.app import create_app
    from tests.unit.conftest import make_settings
    from tests.unit.fake_engine import FakeEngine

    engine = FakeEngine()
    settings = make_settings(tmp_path)  # auth_cache_ttl_s=0: this gateway trusts the store 1 s on
    apps = [create_app(settings, transport=engine.transport()) for _ in range(2)]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        a.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN).raise_for_status()
        key = a.post("/admin/tenants/acme/keys", json={}, headers=ADMIN).json()["key"]
        ids = []
        for seed in (1, 2):
            data = pack(write_adapter(tmp_path / f"g{seed}", seed=seed))
            ids.append(a.post("/admin/tenants/acme/adapters", content=data, headers=ADMIN).json())
        auth = {"Authorization": f"Bearer {key}"}

        def served(client: TestClient) -> str:  # type: ignore[type-arg]
            resp = client.post("/v1/chat/completions", json=CHAT, headers=auth)
            assert resp.status_code == 200, resp.text
            return str(resp.headers["x-loopgate-adapter-version"])

        for client, version in ((a, ids[0]["id"]), (b, ids[1]["id"])):
            body = {"version": version, "reason": "test", "force": True}
            resp = client.post(
                "/admin/tenants/acme/aliases/support/promote", json=body, headers=ADMIN
            )
            assert resp.status_code == 200, resp.text
        assert served(b) == ids[1]["id"]
        until_sync(  # not the v1 it promoted itself, once its trust in that has lapsed
            lambda: served(a) == ids[1]["id"], "the store's target never reached gateway a"
        )
