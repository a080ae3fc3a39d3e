"""The console's Aliases & adapters page: history, versions and lineage, and its actions
(promote through the gate, roll back, retire, canaries), read back through the admin API."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from gateway.console.lineage import Row, lineage_rows, lineage_svg, row_of
from store import AdapterVersion, EvalRun, FineTuningJob, Store
from tests.unit.adapter_files import pack, write_adapter
from tests.unit.conftest import ADMIN, Env
from tests.unit.console_client import sign_in

PAGE = "/console/aliases"
ACME = "/admin/tenants/acme"
T = TypeVar("T")


def upload(env: Env, tmp_path: Path, seed: int, tenant: str = "acme") -> str:
    data = pack(write_adapter(tmp_path / f"a{seed}", seed=seed))
    resp = env.client.post(
        f"/admin/tenants/{tenant}/adapters?name=v{seed}",
        content=data,
        headers={**ADMIN, "content-type": "application/gzip"},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def on_app(env: Env, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run a store call on the app's event loop (records the API cannot make without an engine)."""
    store: Store = env.client.app.state.gateway.store

    async def call() -> T:
        return await work(store)

    return env.client.blocking_portal.call(call)


def acme_id(env: Env) -> str:
    return str(env.client.get(ACME, headers=ADMIN).json()["id"])


def finished_eval(env: Env, version: str, *, promote: bool, reasons: list[str]) -> str:
    """A finished eval run of `version` against the base `support` serves, with the gate's
    decision (what an evals worker records)."""
    run_id = f"ev-{version[-8:]}-{int(promote)}"
    run = EvalRun(run_id, acme_id(env), "support", version, None, "running", "admin", time.time())
    decision = json.dumps({"promote": promote, "reasons": reasons})

    async def record(store: Store) -> None:
        await store.add_eval_run(run)
        await store.finish_eval_run(run_id, "done", promote=promote, decision=decision)

    on_app(env, record)
    return run_id


def history(env: Env, alias: str = "support") -> list[dict[str, object]]:
    resp = env.client.get(f"{ACME}/aliases/{alias}/history", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return list(resp.json())


def target(env: Env, alias: str = "support") -> object:
    aliases = env.client.get(f"{ACME}/aliases", headers=ADMIN).json()["data"]
    return next(a["target"]["adapter_version"] for a in aliases if a["name"] == alias)


def post(env: Env, path: str, csrf: str, **fields: str) -> httpx.Response:
    return env.client.post(path, data={"csrf": csrf, **fields}, follow_redirects=False)


@pytest.fixture
def admin(env: Env) -> str:
    """An admin's console session (its CSRF token), with acme's alias `support` on the base."""
    assert env.client.put(f"{ACME}/aliases/support", json={}, headers=ADMIN).status_code == 200
    return sign_in(env.client, "admin-secret", "ada")


def test_signed_out_goes_to_sign_in_and_admins_pick_a_tenant(env: Env, admin: str) -> None:
    page = env.client.get(PAGE)
    assert page.status_code == 200 and 'id="tenant-picker"' in page.text
    assert 'id="pick-a-tenant"' in page.text and ">globex<" in page.text
    env.client.cookies.clear()
    resp = env.client.get(f"{PAGE}?tenant=acme", follow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/console/login?next=")
    assert env.client.get(f"{PAGE}?tenant=nobody", follow_redirects=False).status_code == 303


def test_the_page_shows_targets_history_versions_and_lineage(
    env: Env, admin: str, tmp_path: Path
) -> None:
    v1 = upload(env, tmp_path, 1)
    forced = {"version": v1, "reason": "first cut", "force": True}
    assert env.client.post(f"{ACME}/aliases/support/promote", json=forced, headers=ADMIN).is_success
    page = env.client.get(f"{PAGE}?tenant=acme")
    assert page.status_code == 200
    row = re.search(r'<tr id="alias-row-support">.*?</tr>', page.text, re.S)
    assert row and v1 in row.group(0)
    table = re.search(r'<table id="history-support".*?</table>', page.text, re.S)
    assert table is not None
    assert "first cut" in table.group(0) and "forced" in table.group(0)
    assert f'<tr id="version-{v1}">' in page.text and 'id="lineage-graph"' in page.text
    assert f'id="lineage-{v1}"' in page.text
    assert 'id="promote-form-support"' in page.text and 'id="retire-form-' not in page.text
    missing = env.client.get(f"{PAGE}?tenant=nobody")
    assert missing.status_code == 404 and "Traceback" not in missing.text


def test_a_promotion_the_gate_refuses_shows_its_reasons_and_changes_nothing(
    env: Env, admin: str, tmp_path: Path
) -> None:
    v1 = upload(env, tmp_path, 1)
    before = history(env)
    no_eval = post(env, f"{PAGE}/acme/support/promote", admin, version=v1)
    assert no_eval.status_code == 409
    assert "Not promoted" in no_eval.text and "no finished eval" in no_eval.text
    assert 'id="aliases-table"' in no_eval.text  # the page again, not an error page
    reasons = ["the tenant suite is not reliably better than live", "below the required 0.050"]
    run_id = finished_eval(env, v1, promote=False, reasons=reasons)
    refused = post(env, f"{PAGE}/acme/support/promote", admin, version=v1, reason="try")
    assert refused.status_code == 409 and run_id in refused.text
    assert all(reason in refused.text for reason in reasons)
    assert history(env) == before and target(env) is None


def test_a_passing_or_forced_promotion_moves_the_alias_and_rollback_moves_it_back(
    env: Env, admin: str, tmp_path: Path
) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    run_id = finished_eval(env, v1, promote=True, reasons=["better"])
    done = post(env, f"{PAGE}/acme/support/promote", admin, version=v1, reason="ship it")
    assert done.status_code == 303
    assert done.headers["location"] == f"{PAGE}?tenant=acme&done=promote"
    assert target(env) == v1
    gated = history(env)[-1]
    assert gated["forced"] is False and gated["actor"] == "console:ada"
    assert run_id in str(gated["reason"]) and "ship it" in str(gated["reason"])
    no_reason = post(env, f"{PAGE}/acme/support/promote", admin, version=v2, force="on")
    assert no_reason.status_code == 400 and "needs a reason" in no_reason.text
    assert target(env) == v1
    forced = post(env, f"{PAGE}/acme/support/promote", admin, version=v2, force="on", reason="ops")
    assert forced.status_code == 303 and target(env) == v2
    assert history(env)[-1]["forced"] is True and history(env)[-1]["reason"] == "ops"
    assert "Promoted." in env.client.get(forced.headers["location"]).text
    back = post(env, f"{PAGE}/acme/support/rollback", admin, reason="regression")
    assert back.status_code == 303 and target(env) == v1
    event = history(env)[-1]
    assert (event["action"], event["from_version"], event["to_version"]) == ("rollback", v2, v1)
    assert event["actor"] == "console:ada" and event["reason"] == "regression"


def test_retire_a_version_and_not_one_an_alias_serves(env: Env, admin: str, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    forced = {"version": v1, "reason": "r", "force": True}
    assert env.client.post(f"{ACME}/aliases/support/promote", json=forced, headers=ADMIN).is_success
    page = env.client.get(f"{PAGE}?tenant=acme").text
    assert f'id="retire-form-{v2}"' in page and f'id="retire-form-{v1}"' not in page
    serving = post(env, f"/console/adapters/acme/{v1}/retire", admin)
    assert serving.status_code == 409 and "still serves" in serving.text
    assert post(env, f"/console/adapters/acme/{v2}/retire", admin).status_code == 303
    statuses = {
        v["id"]: v["status"]
        for v in env.client.get(f"{ACME}/adapters", headers=ADMIN).json()["data"]
    }
    assert statuses == {v1: "live", v2: "retired"}
    assert post(env, "/console/adapters/acme/av-nope/retire", admin).status_code == 404


def test_start_and_stop_a_canary(env: Env, admin: str, tmp_path: Path) -> None:
    v1 = upload(env, tmp_path, 1)
    canary = f"{ACME}/aliases/support/canary"
    for bad in ("0", "150", "ten"):
        resp = post(env, f"{PAGE}/acme/support/canary/start", admin, version=v1, percent=bad)
        assert resp.status_code == 400 and "Traceback" not in resp.text, bad
    assert env.client.get(canary, headers=ADMIN).json()["history"] == []
    started = post(env, f"{PAGE}/acme/support/canary/start", admin, version=v1, percent="25")
    assert started.status_code == 303
    active = env.client.get(canary, headers=ADMIN).json()["active"]["canary"]
    assert (active["version"], active["percent"], active["actor"]) == (v1, 25.0, "console:ada")
    page = env.client.get(f"{PAGE}?tenant=acme").text
    assert 'id="canary-stop-form-support"' in page and 'id="canary-support"' in page
    stopped = post(env, f"{PAGE}/acme/support/canary/stop", admin, reason="enough")
    assert stopped.status_code == 303
    report = env.client.get(canary, headers=ADMIN).json()
    assert report["active"] is None and report["history"][0]["status"] == "stopped"
    assert (
        "console:ada" in report["history"][0]["reason"]
        and "enough" in report["history"][0]["reason"]
    )
    assert post(env, f"{PAGE}/acme/support/canary/stop", admin).status_code == 404


def test_a_tenant_session_sees_only_its_own_tenant_and_cannot_act(env: Env, tmp_path: Path) -> None:
    assert env.client.put(f"{ACME}/aliases/support", json={}, headers=ADMIN).status_code == 200
    v1 = upload(env, tmp_path, 1)
    upload(env, tmp_path, 2, tenant="globex")
    csrf = sign_in(env.client, env.acme_key, "bob")
    own = env.client.get(PAGE)
    assert own.status_code == 200 and v1 in own.text and 'id="alias-row-support"' in own.text
    assert "globex-private" not in own.text and 'id="tenant-picker"' not in own.text
    assert 'id="promote-form-support"' not in own.text
    assert env.client.get(f"{PAGE}?tenant=acme").status_code == 200
    assert env.client.get(f"{PAGE}?tenant=globex").status_code == 404
    before = history(env)
    resp = post(env, f"{PAGE}/acme/support/promote", csrf, version=v1, force="on", reason="x")
    assert resp.status_code == 403 and "read-only" in resp.text
    assert history(env) == before


def test_lineage_rows_name_dataset_job_base_and_parent(env: Env, tmp_path: Path) -> None:
    parent = upload(env, tmp_path, 1)
    tenant_id = acme_id(env)
    job = FineTuningJob(
        "ftjob-lineage1", tenant_id, "key:k", "support", "smollm2", parent, None, None,
        "ds-lineage", "{}", None, 0, "succeeded", "done", time.time(),
    )  # fmt: skip
    child = AdapterVersion(
        "av-child", tenant_id, "ft-child", "h" * 64, "smollm2", "b" * 64, 8, 16.0, ("q_proj",),
        f"job:{job.id}", "candidate", str(tmp_path / "nowhere"), 1, time.time() + 1, "ds-lineage",
    )  # fmt: skip

    async def record(store: Store) -> None:
        await store.create_job(job)
        await store.add_adapter(child)

    on_app(env, record)
    rows = on_app(env, lambda s: _rows(s, tenant_id))
    assert [r.version.id for r in rows] == [parent, "av-child"]
    last = rows[-1]
    assert [n.kind for n in last.chain] == ["dataset", "job", "base", "version"]
    assert (last.job_id, last.parent) == ("ftjob-lineage1", parent)
    assert [n.kind for n in rows[0].chain] == ["base", "version"]  # an upload: no dataset, job
    svg = str(lineage_svg(rows))
    assert "ds-lineage" in svg and "ftjob-lineage1" in svg and f"parent {parent}" in svg
    sign_in(env.client, "admin-secret")
    page = env.client.get(f"{PAGE}?tenant=acme").text
    assert '<tr id="version-av-child">' in page and f"<code>{parent}</code>" in page


async def _rows(store: Store, tenant_id: str) -> list[Row]:
    return await lineage_rows(store, await store.list_adapters(tenant_id))


def test_a_parent_not_drawn_gets_a_dashed_arc_and_text_is_escaped() -> None:
    version = AdapterVersion(
        "av-x", "t1", "<b>name</b>", "h", "base", "b" * 64, 8, 16.0, ("q_proj",),
        "job:ftjob-1", "candidate", "/p", 1, 1.0,
    )  # fmt: skip
    unknown = row_of(version, "ftjob-1", None)
    assert [n.kind for n in unknown.chain] == ["job", "base", "version"]
    assert unknown.parent is None and "not stored" in str(lineage_svg([unknown]))
    job = FineTuningJob(
        "ftjob-1", "t1", "key:k", "support", "base", "av-gone", None, None, None, "{}", None, 0,
        "succeeded", "done", 1.0,
    )  # fmt: skip
    row = row_of(version, "ftjob-1", job)
    assert row.parent == "av-gone"
    svg = str(lineage_svg([row]))
    assert "<b>" not in svg and "&lt;b&gt;name&lt;/b&gt;" in svg
    assert "parent av-gone (not shown)" in svg and "stroke-dasharray" in svg
    assert str(lineage_svg([])).startswith('<p class="muted">')
