"""Eval runs through the serving path (fake engine at the edge) and the promotion gate."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.unit.conftest import ADMIN, Env
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


def run_eval(env: Env, version: str) -> dict:
    body = {"alias": "support", "candidate": version, "suite_jsonl": SUITE}
    resp = env.client.post("/admin/tenants/acme/evals", json=body, headers=ADMIN)
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = env.client.get(f"/admin/tenants/acme/evals/{run_id}", headers=ADMIN).json()
        if run["status"] != "running":
            return dict(run)
        time.sleep(0.1)
    raise AssertionError(f"eval {run_id} did not finish")


def promote(env: Env, version: str, **kw: object) -> httpx.Response:
    return env.client.post(
        "/admin/tenants/acme/aliases/support/promote",
        json={"version": version, **kw},
        headers=ADMIN,
    )


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
    version = str(upload(env, tmp_path, 3)["id"])
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)

    def start(**body: object) -> httpx.Response:
        return env.client.post(
            "/admin/tenants/acme/evals", json={"alias": "support", **body}, headers=ADMIN
        )

    assert start(candidate=version).status_code == 400  # no dataset and no suite
    assert start(candidate=version, suite_jsonl="not json").status_code == 400
    assert start(candidate="av-missing", suite_jsonl=SUITE).status_code == 404
    globex = str(upload(env, tmp_path, 4, tenant="globex")["id"])
    assert start(candidate=globex, suite_jsonl=SUITE).status_code == 404


def guard_cases() -> list[str]:
    from evals.suite import load_guard_suite

    return [c.id for c in load_guard_suite().cases]
