"""The console's Overview: replicas, traffic and errors per tenant, running work, its live part."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.unit.conftest import ADMIN, Env
from tests.unit.console_client import sign_in, sign_out
from tests.unit.test_canary import promote, start, upload
from tests.unit.test_evals_api import SUITE
from tests.unit.test_finetuning_api import GOOD
from tests.unit.test_finetuning_api import upload as upload_file

ADMIN_KEY = "admin-secret"
ROW = re.compile(
    r'<tr data-tenant="(?P<name>[^"]+)">\s*<td>[^<]*</td>\s*'
    r'<td class="num">(?P<requests>\d+)</td>\s*<td class="num[^"]*">(?P<errors>\d+)</td>'
)


def traffic_rows(html: str) -> dict[str, tuple[int, int]]:
    """Tenant name → (requests, errors), as the page's traffic table shows them."""
    return {m["name"]: (int(m["requests"]), int(m["errors"])) for m in ROW.finditer(html)}


def chat(env: Env, key: str, model: str = "smollm2") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return env.client.post("/v1/chat/completions", json=body, headers=env.auth(key)).status_code


def overview_until(env: Env, want: dict[str, tuple[int, int]]) -> str:
    """The page once its traffic table shows `want` (capture writes in the background)."""
    deadline = time.monotonic() + 15
    while True:
        page = env.client.get("/console")
        assert page.status_code == 200, page.text
        shown = traffic_rows(page.text)
        if all(shown.get(name) == counts for name, counts in want.items()):
            return page.text
        assert time.monotonic() < deadline, f"traffic never reached {want}: {shown}"
        time.sleep(0.05)


def work_rows(html: str) -> list[str]:
    """The running-work table's links, in order."""
    table = html.split('id="running-work"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<a href="([^"]+)">', table)


def test_signed_out_the_page_and_its_live_part_send_to_sign_in(env: Env) -> None:
    for path in ("/console", "/console/overview/live"):
        resp = env.client.get(path, follow_redirects=False)
        assert resp.status_code == 303, path
        assert resp.headers["location"].startswith("/console/login?next=")


def test_traffic_and_errors_per_tenant_over_the_last_hour(env: Env) -> None:
    assert [chat(env, env.acme_key) for _ in range(3)] == [200] * 3
    env.engine.mode = "engine500"
    assert all(chat(env, env.acme_key) >= 500 for _ in range(2))
    env.engine.mode = "ok"
    assert chat(env, env.globex_key) == 200
    sign_in(env.client, ADMIN_KEY)
    page = overview_until(env, {"acme": (5, 2), "globex": (1, 0)})
    assert "40.0%" in page  # acme's error rate
    charts = re.findall(r'<figure class="card overview-chart" data-tenant="([^"]+)">', page)
    assert sorted(charts) == ["acme", "globex"]
    acme_chart = page.split('data-tenant="acme">', 2)[2].split("</figure>", 1)[0]
    assert "<svg" in acme_chart and "requests" in acme_chart and "errors" in acme_chart
    # A tenant session sees its own traffic and nothing of another tenant's.
    env.client.cookies.clear()
    sign_in(env.client, env.globex_key)
    page = overview_until(env, {"globex": (1, 0)})
    assert "acme" not in traffic_rows(page) and 'data-tenant="acme"' not in page


def test_an_old_request_is_outside_the_hour(env: Env) -> None:
    assert chat(env, env.acme_key) == 200
    sign_in(env.client, ADMIN_KEY)
    overview_until(env, {"acme": (1, 0)})
    store = env.client.app.state.gateway.store
    portal = env.client.blocking_portal
    portal.call(store.db.execute, "UPDATE completions SET created_at = created_at - 3700")
    portal.call(store.db.commit)
    assert traffic_rows(env.client.get("/console").text)["acme"] == (0, 0)


def test_replicas_show_readiness_circuit_and_in_flight_like_the_admin_api(env: Env) -> None:
    backends = env.client.get("/admin/backends", headers=ADMIN).json()["data"]
    assert [(b["ready"], b["circuit"]) for b in backends] == [(True, "closed")]
    sign_in(env.client, ADMIN_KEY)
    page = env.client.get("/console").text
    name = backends[0]["name"]
    row = page.split(f'data-replica="{name}"', 1)[1].split("</tr>", 1)[0]
    assert "ready" in row and "closed" in row and "not ready" not in row
    # Three engine failures in a row open the replica's circuit: the live part says so.
    env.engine.mode = "engine500"
    for _ in range(3):
        chat(env, env.acme_key)
    live = env.client.get("/console/overview/live")
    assert live.status_code == 200 and "<html" not in live.text  # a fragment, not a page
    row = live.text.split(f'data-replica="{name}"', 1)[1].split("</tr>", 1)[0]
    assert ">open<" in row
    assert env.client.get("/admin/backends", headers=ADMIN).json()["data"][0]["circuit"] == "open"


def test_the_live_part_reloads_from_its_fragment_route(env: Env) -> None:
    sign_in(env.client, env.acme_key)
    page = env.client.get("/console").text
    assert 'data-refresh="5" data-src="/console/overview/live"' in page
    live = env.client.get("/console/overview/live")
    assert live.status_code == 200 and live.headers["cache-control"] == "no-store"
    assert 'id="replicas"' in live.text and 'id="running-work"' in live.text
    assert "<nav" not in live.text


def queue_job(env: Env, key: str) -> str:
    file_id = upload_file(env, GOOD, key=key)["id"]
    body = {"model": "smollm2", "training_file": file_id}
    resp = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.auth(key))
    assert resp.status_code == 200 and resp.json()["status"] == "queued", resp.text
    return str(resp.json()["id"])


def queue_eval(env: Env, version: str) -> str:
    body = {"alias": "support", "candidate": version, "suite_jsonl": SUITE}
    resp = env.client.post("/admin/tenants/acme/evals", json=body, headers=ADMIN)
    assert resp.status_code == 202 and resp.json()["status"] == "queued", resp.text
    return str(resp.json()["id"])


def start_loop(env: Env, tenant: str, alias: str) -> str:
    resp = env.client.post(f"/admin/tenants/{tenant}/loops", json={"alias": alias}, headers=ADMIN)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def test_running_work_is_listed_with_links_and_scoped_to_the_tenant(
    env: Env, tmp_path: Path
) -> None:
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    canary = start(env, v2, 20)
    acme_job = queue_job(env, env.acme_key)
    globex_job = queue_job(env, env.globex_key)
    run = queue_eval(env, v2)
    acme_loop = start_loop(env, "acme", "support")
    globex_loop = start_loop(env, "globex", "globex-private")

    sign_in(env.client, ADMIN_KEY)
    links = work_rows(env.client.get("/console").text)
    assert links == [
        f"/console/jobs/{globex_job}",
        f"/console/jobs/{acme_job}",
        f"/console/evals/{run}",
        "/console/aliases?tenant=acme",
        f"/console/loops/{globex_loop}",
        f"/console/loops/{acme_loop}",
    ]
    live = env.client.get("/console/overview/live").text
    assert f"support: {canary['version']} at 20%" in live
    acme_replica = live.split('id="replicas"', 1)[1].split("</table>", 1)[0]
    assert v1 in acme_replica  # the live version is loaded on the replica

    # Each tenant session sees only its own work, and only its own adapters on the replicas.
    env.client.cookies.clear()
    csrf = sign_in(env.client, env.globex_key)
    live = env.client.get("/console/overview/live").text
    assert work_rows(live) == [f"/console/jobs/{globex_job}", f"/console/loops/{globex_loop}"]
    assert v1 not in live and v2 not in live and acme_job not in live and run not in live
    sign_out(env.client, csrf)
    sign_in(env.client, env.acme_key)
    assert work_rows(env.client.get("/console/overview/live").text) == [
        f"/console/jobs/{acme_job}",
        f"/console/evals/{run}",
        "/console/aliases?tenant=acme",
        f"/console/loops/{acme_loop}",
    ]

    # Ended work leaves the list: the job cancelled, the canary stopped (read back via the API).
    resp = env.client.post(f"/v1/fine_tuning/jobs/{acme_job}/cancel", headers=env.auth())
    assert resp.json()["status"] == "cancelled"
    stop = env.client.delete("/admin/tenants/acme/aliases/support/canary", headers=ADMIN)
    assert stop.status_code == 200
    assert work_rows(env.client.get("/console/overview/live").text) == [
        f"/console/evals/{run}",
        f"/console/loops/{acme_loop}",
    ]


def test_nothing_running_says_so(env: Env) -> None:
    sign_in(env.client, ADMIN_KEY)
    live = env.client.get("/console/overview/live").text
    assert work_rows(live) == [] and "nothing running" in live
