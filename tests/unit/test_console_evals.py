"""The console's Evals pages: run list, a run's suites, gate, plot and per-case table (paged,
filtered), tenant scoping, the status fragment of a queued run, errors as pages."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from markupsafe import escape

from gateway.console.charts import Estimate, interval_chart
from store import EvalResult, EvalRun, Store, open_store
from tests.unit.conftest import ADMIN, Env
from tests.unit.console_client import sign_in
from tests.unit.test_adapters_api import upload
from tests.unit.test_evals_api import guard_cases

CASES = 30  # tenant suite cases; q00-q03 the candidate loses, the rest it wins
LOSSES = [f"q{i:02d}" for i in range(4)]
SUITE = "\n".join(
    json.dumps(
        {
            "id": f"q{i:02d}",
            "messages": [{"role": "user", "content": f"Ticket {i}: my printer is broken"}],
            "checks": [{"type": "regex", "pattern": "^ANSWER:"}],
        }
    )
    for i in range(CASES)
)
CASE_ROW = re.compile(r'<tr id="eval-case-([a-z]+)-([^"]+)"')


def answers(request: httpx.Request) -> httpx.Response:
    """The candidate (an adapter, model lg-…) fails tickets 0-3 and passes the rest; the base
    (which the alias serves: live too) passes tickets 0-3 only."""
    body = json.loads(request.content)
    prompt = body["messages"][-1]["content"]
    ticket = int(m.group(1)) if (m := re.match(r"Ticket (\d+):", prompt)) else None
    early = ticket is not None and ticket < 4
    if body["model"].startswith("lg-"):
        text = "no idea, candidate" if early else "ANSWER: candidate fixed it"
    else:
        text = "ANSWER: base knew it" if early else "I am not sure, says base."
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
    }
    usage = {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    return httpx.Response(
        200, json={"id": "c-1", "object": "chat.completion", "model": body["model"],
                   "choices": [choice], "usage": usage}
    )  # fmt: skip


def start_run(env: Env, tmp_path: Path, seed: int) -> str:
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)
    version = str(upload(env, tmp_path, seed)["id"])
    body = {"alias": "support", "candidate": version, "suite_jsonl": SUITE}
    resp = env.client.post("/admin/tenants/acme/evals", json=body, headers=ADMIN)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def finished_run(env: Env, tmp_path: Path) -> str:
    """A run done by the evals worker (the `evals_worker` fixture), through the admin API."""
    env.engine.custom = answers  # type: ignore[assignment]
    run_id = start_run(env, tmp_path, 1)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        run = env.client.get(f"/admin/tenants/acme/evals/{run_id}", headers=ADMIN).json()
        if run["status"] in ("done", "failed"):
            assert run["status"] == "done", run
            return run_id
        time.sleep(0.05)
    raise AssertionError(f"eval {run_id} did not finish")


def page(env: Env, path: str, status: int = 200) -> str:
    resp = env.client.get(path, follow_redirects=False)
    assert resp.status_code == status, resp.text
    assert "Traceback" not in resp.text
    return resp.text


def case_ids(html: str) -> list[tuple[str, str]]:
    return CASE_ROW.findall(html)


@pytest.mark.usefixtures("evals_worker")
def test_a_run_shows_its_suites_gate_plot_and_all_three_answers(env: Env, tmp_path: Path) -> None:
    run_id = finished_run(env, tmp_path)
    sign_in(env.client, "admin-secret")
    runs = page(env, "/console/evals?tenant=acme")
    assert f'id="eval-run-{run_id}"' in runs and "support" in runs
    api = env.client.get(f"/admin/tenants/acme/evals/{run_id}", headers=ADMIN).json()
    row = runs.split(f'id="eval-run-{run_id}"')[1].split("</tr>")[0]
    assert "done" in row and ("promote" if api["promote"] else "keep live") in row
    html = page(env, f"/console/evals/{run_id}?tenant=acme")
    tenant = api["summary"]["tenant"]
    suites = html.split('id="eval-suites"')[1].split("</table>")[0]
    assert f"{tenant['means']['candidate']:.3f}" in suites
    assert f"{tenant['vs_live']['mean_delta']:+.3f}" in suites
    assert f"{tenant['vs_live']['ci']['low']:+.3f}" in suites and "26/0/4" in suites
    decision = html.split('id="eval-decision"')[1].split("</table>")[0]
    for reason in api["decision"]["reasons"]:
        assert str(escape(reason)) in decision
    assert '<svg class="chart"' in html and html.count('<g class="estimate">') == 4
    first = html.split('<tr id="eval-case-tenant-q00"')[1].split("</tr>")[0]
    cells = dict(re.findall(r'data-system="(\w+)">(.*?)</td>', first, re.S))
    assert "no idea, candidate" in cells["candidate"] and "fail" in cells["candidate"]
    assert "ANSWER: base knew it" in cells["live"] and "ANSWER: base knew it" in cells["base"]
    assert "/^ANSWER:/ not found in" in cells["candidate"]  # the grader's reason
    assert "/^ANSWER:/ found" in cells["live"]
    assert "Ticket 0: my printer is broken" in first  # the prompt, from the uploaded suite
    results = env.client.get(f"/admin/tenants/acme/evals/{run_id}/results", headers=ADMIN).json()
    assert all(r["reasons"] for r in results["data"])  # the API serves the same reasons
    png = env.client.get(f"/console/evals/{run_id}/report/report.png?tenant=acme")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


@pytest.mark.usefixtures("evals_worker")
def test_the_case_table_pages_and_filters_losses_and_guard(env: Env, tmp_path: Path) -> None:
    run_id = finished_run(env, tmp_path)
    sign_in(env.client, "admin-secret")
    base = f"/console/evals/{run_id}?tenant=acme"
    first = page(env, base)
    assert case_ids(first)[:CASES] == [("tenant", f"q{i:02d}") for i in range(25)]
    assert 'id="eval-cases-next"' in first and 'id="eval-cases-prev"' not in first
    seen, n = [], 1
    while True:
        html = page(env, f"{base}&page={n}")
        seen += case_ids(html)
        if 'id="eval-cases-next"' not in html:
            break
        n += 1
    guard = guard_cases()
    assert len(seen) == len(set(seen)) == CASES + len(guard)
    losses = page(env, f"{base}&only=losses")
    tenant_losses = [c for s, c in case_ids(losses) if s == "tenant"]
    assert tenant_losses == LOSSES
    assert losses.count('class="loss"') == len(case_ids(losses))
    guard_page = page(env, f"{base}&only=guard")
    assert {s for s, _ in case_ids(guard_page)} == {"guard"}
    assert [c for _, c in case_ids(guard_page)] == sorted(guard)[:25]
    assert "page 1" in guard_page and 'id="eval-cases-next"' in guard_page
    second = page(env, f"{base}&only=guard&page=2")
    assert [c for _, c in case_ids(second)] == sorted(guard)[25:50]
    assert "only=guard&amp;page=1" in second  # the pager keeps the filter


@pytest.mark.usefixtures("evals_worker")
def test_a_tenant_session_sees_only_its_own_runs(env: Env, tmp_path: Path) -> None:
    assert page(env, "/console/evals", 303).strip() == ""
    run_id = finished_run(env, tmp_path)
    sign_in(env.client, env.acme_key)
    assert run_id in page(env, "/console/evals")
    assert "eval-tenant-form" not in page(env, "/console/evals")  # no tenant picker
    assert "no idea, candidate" in page(env, f"/console/evals/{run_id}")
    page(env, "/console/evals?tenant=globex", 404)
    sign_in(env.client, env.globex_key)
    assert run_id not in page(env, "/console/evals")
    for path in (
        f"/console/evals/{run_id}",
        f"/console/evals/{run_id}?tenant=acme",
        f"/console/evals/{run_id}/status",
        f"/console/evals/{run_id}/report/report.png",
    ):
        assert "no eval run" in page(env, path, 404) or "no tenant" in page(env, path, 404)


def test_unknown_runs_and_bad_filters_are_error_pages(env: Env, tmp_path: Path) -> None:
    run_id = start_run(env, tmp_path, 2)  # queued: no worker here
    sign_in(env.client, "admin-secret")
    assert "no eval run" in page(env, "/console/evals/ev-nope?tenant=acme", 404)
    assert "no tenant" in page(env, f"/console/evals/{run_id}?tenant=nobody", 404)
    assert "Tenant <strong>acme</strong>" in page(env, f"/console/evals/{run_id}")  # id alone
    assert "only=" in page(env, f"/console/evals/{run_id}?tenant=acme&only=wins", 400)
    for bad in ("0", "x", "-3", "100001"):
        assert "page=" in page(env, f"/console/evals/{run_id}?tenant=acme&page={bad}", 400)
    report = f"/console/evals/{run_id}/report/secrets.txt?tenant=acme"
    assert "no report file" in page(env, report, 404)


def test_a_queued_run_refreshes_its_status_from_a_fragment(env: Env, tmp_path: Path) -> None:
    run_id = start_run(env, tmp_path, 3)
    sign_in(env.client, "admin-secret")
    html = page(env, f"/console/evals/{run_id}?tenant=acme")
    src = f"/console/evals/{run_id}/status?tenant=acme"
    assert f'data-refresh="3" data-src="{src}"' in html
    assert 'id="eval-verdict"' not in html and 'id="eval-cases-empty"' in html
    fragment = page(env, src)
    assert "queued" in fragment and "<html" not in fragment
    store = env.client.app.state.gateway.store
    finish = functools.partial(store.finish_eval_run, run_id, "failed", error="it broke")
    env.client.blocking_portal.call(finish)
    done = page(env, src)
    assert "failed" in done and "it broke" in done and 'id="eval-status-reload"' in done
    assert "data-refresh" not in page(env, f"/console/evals/{run_id}?tenant=acme")


def test_the_interval_chart_draws_a_whisker_per_estimate() -> None:
    svg = interval_chart(
        [("tenant", [Estimate("Δ vs live", 0.2, 0.1, 0.3)]), ("guard", [Estimate("Δ", -1, -2, 0)])],
        height=220,
        reference=0.05,
    )
    assert svg.count('<g class="estimate">') == 2 and 'stroke-dasharray="4 3"' in svg
    assert "Δ vs live: +0.200 [+0.100, +0.300]" in svg
    dots = [float(y) for y in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', svg)]
    assert dots[0] < dots[1]  # +0.2 is drawn above -1
    assert "<script" not in interval_chart([("<script>", [Estimate("<b>", 0, 0, 0)])])
    assert "no data yet" in interval_chart([])


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    await s.open()
    yield s
    await s.close()


async def test_a_page_of_cases_from_either_store(store: Store) -> None:
    tenant = await store.create_tenant("t-1", "t1")
    run = EvalRun("ev-1", tenant.id, "a", "v2", "v1", "queued", "admin", time.time())
    await store.add_eval_run(run)
    scores = {("tenant", "b"): (0.0, 1.0), ("tenant", "a"): (1.0, 0.5), ("guard", "g"): (0.2, 0.9)}
    await store.add_eval_results(
        [
            EvalResult("ev-1", suite, case, system, score, score > 0.5, 1.0, f"{system}!", "why")
            for (suite, case), pair in scores.items()
            for system, score in zip(("candidate", "live"), pair, strict=True)
        ]
    )

    async def cases(**kw: object) -> list[tuple[str, str, str]]:
        args: dict[str, object] = {"suite": None, "losses": False, "limit": 10, "offset": 0} | kw
        found = await store.eval_case_page("ev-1", **args)  # type: ignore[arg-type]
        return [(r.suite, r.case_id, r.system) for r in found]

    everything = await cases()
    assert [(s, c) for s, c, _ in everything[::2]] == [
        ("tenant", "a"),
        ("tenant", "b"),
        ("guard", "g"),
    ]
    assert await cases(limit=1, offset=1) == [("tenant", "b", "candidate"), ("tenant", "b", "live")]
    assert {(s, c) for s, c, _ in await cases(losses=True)} == {("tenant", "b"), ("guard", "g")}
    assert {c for _, c, _ in await cases(suite="guard", losses=True)} == {"g"}
    assert await cases(offset=3) == []
    assert {r.reasons for r in await store.list_eval_results("ev-1")} == {"why"}
