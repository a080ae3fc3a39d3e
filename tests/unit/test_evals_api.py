"""Eval runs through the serving path (fake engine at the edge) and the promotion gate."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.support.evals_worker import evals_worker as running_evals_worker
from tests.unit.conftest import ADMIN, Env, make_settings
from tests.unit.test_adapters_api import upload

SUITE = "\n".join(
    json.dumps(
        {
            "id": f"q{i}",
            "messages": [{"role": "user", "content": f"Ticket {i}: my printer is broken"}],
            "checks": [{"type": "regex", "pattern": "^ANSWER:"}],
        }
    )
    for i in range(12)
)


def answer_by_model(adapter_answer: str) -> object:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        text = adapter_answer if body["model"].startswith("lg-") else "I am not sure."
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
            },
        )

    return handle


def run_eval(env: Env, version: str, suite_jsonl: str = SUITE) -> dict:
    body = {"alias": "support", "candidate": version, "suite_jsonl": suite_jsonl}
    resp = env.client.post("/admin/tenants/acme/evals", json=body, headers=ADMIN)
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = env.client.get(f"/admin/tenants/acme/evals/{run_id}", headers=ADMIN).json()
        if run["status"] in ("done", "failed"):
            return dict(run)
        time.sleep(0.1)
    raise AssertionError(f"eval {run_id} did not finish")


def promote(env: Env, version: str, **kw: object) -> httpx.Response:
    return env.client.post(
        "/admin/tenants/acme/aliases/support/promote",
        json={"version": version, **kw},
        headers=ADMIN,
    )


@pytest.mark.usefixtures("evals_worker")  # the eval run is done by an evals worker
def test_a_clear_winner_passes_the_gate_and_is_promoted(env: Env, tmp_path: Path) -> None:
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)
    version = str(upload(env, tmp_path, 1)["id"])
    refused = promote(env, version)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "eval_required"
    env.engine.custom = answer_by_model("ANSWER: escalated to support ##")  # type: ignore[assignment]
    run = run_eval(env, version)
    assert run["status"] == "done" and run["promote"] is True, run
    tenant = run["summary"]["tenant"]
    assert tenant["means"] == {"candidate": 1.0, "live": 0.0, "base": 0.0}
    assert tenant["vs_live"]["ci"]["low"] > 0
    for name in ("report.html", "report.md", "report.png"):
        assert (
            env.client.get(
                f"/admin/tenants/acme/evals/{run['id']}/{name}", headers=ADMIN
            ).status_code
            == 200
        )
    png = env.client.get(f"/admin/tenants/acme/evals/{run['id']}/report.png", headers=ADMIN)
    assert png.content.startswith(b"\x89PNG")
    results = env.client.get(f"/admin/tenants/acme/evals/{run['id']}/results", headers=ADMIN)
    assert len(results.json()["data"]) == 3 * (12 + len(guard_cases()))
    ok = promote(env, version, reason="better format")
    assert ok.status_code == 200, ok.text
    event = env.client.get("/admin/tenants/acme/aliases/support/history", headers=ADMIN).json()[-1]
    assert event["forced"] is False and run["id"] in event["reason"]


@pytest.mark.usefixtures("evals_worker")  # the eval run is done by an evals worker
def test_an_equal_candidate_is_refused_and_forcing_is_audited(env: Env, tmp_path: Path) -> None:
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)
    version = str(upload(env, tmp_path, 2)["id"])
    env.engine.custom = answer_by_model("I am not sure.")  # type: ignore[assignment]
    run = run_eval(env, version)
    assert run["promote"] is False
    reasons = " ".join(run["decision"]["reasons"])
    assert "not reliably better than live" in reasons and "below the required 0.050" in reasons
    refused = promote(env, version)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "gate_refused"
    assert promote(env, version, force=True).status_code == 400  # forcing needs a reason
    forced = env.client.post(
        "/admin/tenants/acme/aliases/support/promote",
        json={"version": version, "force": True, "reason": "hotfix approved by ops"},
        headers={**ADMIN, "x-loopgate-actor": "alice"},
    )
    assert forced.status_code == 200, forced.text
    event = env.client.get("/admin/tenants/acme/aliases/support/history", headers=ADMIN).json()[-1]
    assert event["forced"] is True and event["actor"] == "alice"
    assert event["reason"] == "hotfix approved by ops"


def test_gate_policy_and_bad_eval_requests(env: Env, tmp_path: Path) -> None:
    policy = {"min_improvement": 0.2, "tenant_checks": [{"type": "regex", "pattern": "^A"}]}
    resp = env.client.put("/admin/tenants/acme/gate-policy", json=policy, headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["min_improvement"] == 0.2
    got = env.client.get("/admin/tenants/acme/gate-policy", headers=ADMIN).json()
    assert got["tenant_checks"] == [{"type": "regex", "pattern": "^A", "fullmatch": False}] or (
        got["tenant_checks"][0]["pattern"] == "^A"
    )
    bad = env.client.put("/admin/tenants/acme/gate-policy", json={"confidence": 2}, headers=ADMIN)
    assert bad.status_code == 400
    schema = {"tenant_checks": [{"type": "json", "schema": {"type": "no-such-type"}}]}
    bad = env.client.put("/admin/tenants/acme/gate-policy", json=schema, headers=ADMIN)
    assert bad.status_code == 400 and "invalid JSON schema" in bad.json()["error"]["message"]
    assert env.client.get("/admin/tenants/acme/gate-policy", headers=ADMIN).json() == got
    version = str(upload(env, tmp_path, 3)["id"])
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)

    def start(**body: object) -> httpx.Response:
        return env.client.post(
            "/admin/tenants/acme/evals", json={"alias": "support", **body}, headers=ADMIN
        )

    assert start(candidate=version).status_code == 400  # no dataset and no suite
    assert start(candidate=version, suite_jsonl="not json").status_code == 400
    line = {"id": "c1", "messages": [{"role": "user", "content": "hi"}],
            "checks": [{"type": "json", "schema": {"type": 7}}]}  # fmt: skip
    bad_schema = start(candidate=version, suite_jsonl=json.dumps(line))
    assert bad_schema.status_code == 400, bad_schema.text
    assert bad_schema.json()["error"]["param"] == "suite_jsonl"
    assert start(candidate="av-missing", suite_jsonl=SUITE).status_code == 404
    globex = str(upload(env, tmp_path, 4, tenant="globex")["id"])
    assert start(candidate=globex, suite_jsonl=SUITE).status_code == 404


def guard_cases() -> list[str]:
    from evals.suite import load_guard_suite

    return [c.id for c in load_guard_suite().cases]


def started_run(env: Env, tmp_path: Path, seed: int) -> str:
    """A queued eval run of a fresh candidate for alias 'support' (no worker takes it)."""
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)
    version = str(upload(env, tmp_path, seed)["id"])
    body = {"alias": "support", "candidate": version, "suite_jsonl": SUITE}
    resp = env.client.post("/admin/tenants/acme/evals", json=body, headers=ADMIN)
    assert resp.status_code == 202 and resp.json()["status"] == "queued", resp.text
    return str(resp.json()["id"])


def claim(env: Env, worker: str) -> str | None:
    store = env.client.app.state.gateway.store
    run = env.client.blocking_portal.call(store.claim_eval_run, worker)
    return None if run is None else str(run.id)


def test_the_answers_route_is_for_admins_and_running_runs_and_never_a_500(
    env: Env, tmp_path: Path
) -> None:
    run_id = started_run(env, tmp_path, 5)
    url = f"/admin/tenants/acme/evals/{run_id}/answers"
    body = {"system": "candidate", "messages": [{"role": "user", "content": "hi"}]}
    assert env.client.post(url, json=body).status_code == 401
    assert env.client.post(url, json=body, headers=env.auth()).status_code == 403
    queued = env.client.post(url, json=body, headers=ADMIN)
    assert queued.status_code == 409 and "queued" in queued.json()["error"]["message"]
    unknown = env.client.post(url.replace(run_id, "ev-nope"), json=body, headers=ADMIN)
    assert unknown.status_code == 404
    other = env.client.post(url.replace("acme", "globex"), json=body, headers=ADMIN)
    assert other.status_code == 404  # another tenant's run is not found
    assert claim(env, "w-test") == run_id
    bad = {"system": "judge", "messages": []}
    assert env.client.post(url, json=bad, headers=ADMIN).status_code == 400
    env.engine.custom = answer_by_model("ANSWER: ok")  # type: ignore[assignment]
    for system, text in (("candidate", "ANSWER: ok"), ("live", "I am not sure."), ("base", None)):
        resp = env.client.post(url, json={**body, "system": system}, headers=ADMIN)
        assert resp.status_code == 200, resp.text
        assert text is None or resp.json()["content"] == text
        assert resp.json()["latency_ms"] >= 0
    sent = [json.loads(r.content) for r in env.engine.requests[-3:]]
    assert [s["model"].startswith("lg-") for s in sent] == [True, False, False]
    assert len({s["cache_salt"] for s in sent}) == 1 and all(s["temperature"] == 0 for s in sent)
    env.engine.custom = lambda request: httpx.Response(500, json={"error": "boom"})  # type: ignore[assignment]
    failing = env.client.post(url, json=body, headers=ADMIN)
    assert failing.status_code == 502 and "500" in failing.json()["error"]["message"]


@pytest.mark.parametrize("overrides", [{"job_stale_after_s": 0.3, "job_heartbeat_s": 0.05}])
def test_a_run_whose_worker_died_is_queued_again_and_done_by_another(
    env: Env, tmp_path: Path, overrides: dict[str, object]
) -> None:
    run_id = started_run(env, tmp_path, 6)
    assert claim(env, "w-dead") == run_id  # ... and that worker never beats again
    env.engine.custom = answer_by_model("ANSWER: escalated ##")  # type: ignore[assignment]
    with running_evals_worker(env.client, make_settings(tmp_path, **overrides)):
        deadline = time.monotonic() + 60
        while True:
            run = env.client.get(f"/admin/tenants/acme/evals/{run_id}", headers=ADMIN).json()
            if run["status"] in ("done", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert run["status"] == "done" and run["promote"] is True, run
    store = env.client.app.state.gateway.store
    record = env.client.blocking_portal.call(store.get_eval_run, tenant_id(env), run_id)
    assert record.attempts == 2 and record.worker != "w-dead"


def tenant_id(env: Env) -> str:
    gw = env.client.app.state.gateway
    return str(env.client.blocking_portal.call(gw.admin.tenant, "acme").id)
