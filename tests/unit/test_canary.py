"""Canary releases through the admin API and the serving path, against the fake engine."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.canary import (
    MIN_LIVE_SAMPLES,
    ArmSignals,
    Thresholds,
    bucket,
    in_canary,
    verdict,
)
from tests.unit.adapter_files import pack, write_adapter
from tests.unit.conftest import ADMIN, Env, make_settings

CANARY = "/admin/tenants/{t}/aliases/{a}/canary"
FAST_MONITOR = {"canary_check_interval_s": 0.05}


def upload(env: Env, tmp_path: Path, seed: int, tenant: str = "acme") -> str:
    data = pack(write_adapter(tmp_path / f"a{seed}", seed=seed))
    resp = env.client.post(
        f"/admin/tenants/{tenant}/adapters?name=v{seed}",
        content=data,
        headers={**ADMIN, "content-type": "application/gzip"},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def promote(env: Env, version: str) -> None:
    resp = env.client.post(
        "/admin/tenants/acme/aliases/support/promote",
        json={"version": version, "reason": "t", "force": True},
        headers=ADMIN,
    )
    assert resp.status_code == 200, resp.text


def start(
    env: Env, version: str, percent: float, tenant: str = "acme", alias: str = "support", **t: float
) -> dict[str, object]:
    body = {"version": version, "percent": percent, "thresholds": t, "reason": "try it"}
    resp = env.client.post(CANARY.format(t=tenant, a=alias), json=body, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def show(env: Env, tenant: str = "acme", alias: str = "support") -> dict[str, object]:
    resp = env.client.get(CANARY.format(t=tenant, a=alias), headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def chat(env: Env, user: str, stream: bool = False) -> tuple[str, str]:
    """(the version that served, the completion id); the request must succeed."""
    body = {"model": "support", "messages": [{"role": "user", "content": "hi"}], "user": user}
    resp = env.client.post(
        "/v1/chat/completions", json={**body, "stream": stream}, headers=env.auth()
    )
    assert resp.status_code == 200, resp.text
    if stream:
        assert b"[DONE]" in resp.content and b'"error"' not in resp.content
        return resp.headers["x-loopgate-adapter-version"], ""
    return resp.headers["x-loopgate-adapter-version"], str(resp.json()["id"])


def check(env: Env) -> list[dict[str, object]]:
    """One monitor pass, run on the app's loop; the canaries it rolled back."""
    gw = env.client.app.state.gateway
    return [
        {"status": c.status, "reason": c.reason}
        for c in env.client.blocking_portal.call(gw.canaries.check)
    ]


def engine_calls_to(env: Env, version: str) -> int:
    return sum(1 for b in env.engine.bodies() if str(b["model"]).endswith(version))


# --- pure parts ------------------------------------------------------------------------------


def test_buckets_are_stable_and_spread_evenly() -> None:
    assert bucket("t1", "support", "alice") == bucket("t1", "support", "alice")
    assert bucket("t1", "support", "alice") != bucket("t2", "support", "alice")
    share = sum(in_canary(20, bucket("t1", "support", f"user-{i}")) for i in range(10_000))
    assert 1_850 < share < 2_150
    assert not any(in_canary(0.0, b) for b in range(10_000))
    assert all(in_canary(100.0, b) for b in range(10_000))


def signals(
    requests: int, errors: int = 0, p50: float | None = 10.0, samples: int = 50
) -> ArmSignals:
    return ArmSignals(
        requests, errors, errors / requests if requests else 0.0, p50, samples, 0, 0, None
    )


def test_verdict_waits_for_min_requests_then_names_the_crossed_threshold() -> None:
    t = Thresholds(max_error_rate=0.1, max_latency_ratio=2.0, min_requests=20)
    live = signals(100)
    assert verdict(t, signals(19, errors=19), live) is None
    assert verdict(t, signals(20, errors=2), live) is None
    assert verdict(t, signals(20, errors=3), live) == "error rate 0.15 > 0.10 after 20 requests"
    slow = verdict(t, signals(40, p50=25.0), live)
    assert slow is not None and slow.startswith("latency ratio 2.50 > 2.00")
    assert verdict(t, signals(40, p50=25.0), signals(4, samples=MIN_LIVE_SAMPLES - 1)) is None
    bad = ArmSignals(40, 0, 0.0, 10.0, 40, 25, 10, 0.4)
    assert verdict(t, bad, live) == "negative feedback rate 0.40 > 0.30 over 25 completions"
    few_rated = ArmSignals(40, 0, 0.0, 10.0, 40, 19, 10, 0.53)
    assert verdict(t, few_rated, live) is None


# --- through the gateway ---------------------------------------------------------------------


def test_assignment_is_sticky_per_user_and_near_the_percent(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    start(env, v2, 25)
    arms = {f"user-{i}": chat(env, f"user-{i}")[0] for i in range(400)}
    share = Counter(arms.values())
    assert set(share) == {v1, v2}
    assert 70 <= share[v2] <= 130  # 25% of 400 is 100 (sd ~ 8.7)
    served = list(arms.values())
    for user in list(arms)[:40]:
        again = [chat(env, user)[0], chat(env, user, stream=True)[0]]
        assert again == [arms[user], arms[user]]
        served += again
    # without a `user` field the API key is the sticky id: one key, one arm
    plain = {"model": "support", "messages": [{"role": "user", "content": "hi"}]}
    keyed = [
        env.client.post("/v1/chat/completions", json=plain, headers=env.auth()).headers[
            "x-loopgate-adapter-version"
        ]
        for _ in range(10)
    ]
    assert len(set(keyed)) == 1
    served += keyed
    active = show(env)["active"]
    assert isinstance(active, dict)
    canary_arm, live_arm = active["canary_arm"], active["live_arm"]
    assert (canary_arm["requests"], live_arm["requests"]) == (served.count(v2), served.count(v1))
    assert canary_arm["errors"] == live_arm["errors"] == 0


@pytest.mark.parametrize("overrides", [FAST_MONITOR])
def test_failing_candidate_is_rolled_back_and_no_request_is_lost(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    env.engine.fail_for = (v2,)  # the candidate answers 500 to everything
    start(env, v2, 50, max_error_rate=0.05, min_requests=10)
    served = [chat(env, f"user-{i}", stream=i % 3 == 0)[0] for i in range(60)]
    assert set(served) == {v1}  # every request got its answer, from the live version
    assert engine_calls_to(env, v2) >= 10  # the candidate really was tried
    deadline = time.monotonic() + 10
    while show(env)["active"] is not None:  # the monitor task runs every 50 ms
        assert time.monotonic() < deadline, "the monitor never rolled the canary back"
        time.sleep(0.05)
    history = show(env)["history"]
    assert isinstance(history, list) and len(history) == 1
    ended = history[0]
    assert ended["status"] == "rolled_back"
    assert ended["reason"].startswith("error rate 1.00 > 0.05 after ")
    tried = engine_calls_to(env, v2)
    assert {chat(env, f"user-{i}")[0] for i in range(60)} == {v1}
    assert engine_calls_to(env, v2) == tried  # no traffic reaches the candidate any more
    deadline = time.monotonic() + 5
    while any(name.endswith(v2) for name in env.engine.loras):
        assert time.monotonic() < deadline, "the candidate was never unloaded"
        time.sleep(0.05)
    db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
    rows = Counter(db.execute("SELECT adapter_version, status FROM completions").fetchall())
    assert set(rows) == {(v1, "complete"), (v2, "error")}  # each failed try is on record
    assert rows[(v1, "complete")] == 120


def test_healthy_canary_stays_and_is_promoted(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    start(env, v2, 50, min_requests=10, max_latency_ratio=20.0)
    served = Counter(chat(env, f"user-{i}")[0] for i in range(60))
    assert served[v1] > 0 and served[v2] > 0
    assert check(env) == []
    active = show(env)["active"]
    assert isinstance(active, dict)
    assert active["canary_arm"]["requests"] == served[v2]
    assert active["canary_arm"]["error_rate"] == 0.0
    assert active["canary_arm"]["p50_latency_ms"] > 0
    url = CANARY.format(t="acme", a="support") + "/promote"
    gated = env.client.post(url, json={"reason": "looks good"}, headers=ADMIN)
    assert gated.status_code == 409 and gated.json()["error"]["code"] == "eval_required"
    assert env.client.post(url, json={"force": True}, headers=ADMIN).status_code == 400
    assert show(env)["active"] is not None  # a refused promotion leaves the canary running
    resp = env.client.post(url, json={"reason": "looks good", "force": True}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["canary"]["status"] == "promoted"
    assert body["swap"]["from_version"] == v1 and body["swap"]["to_version"] == v2
    assert {chat(env, f"user-{i}")[0] for i in range(60)} == {v2}
    report = show(env)
    assert report["active"] is None and report["history"][0]["status"] == "promoted"  # type: ignore[index]
    history = env.client.get("/admin/tenants/acme/aliases/support/history", headers=ADMIN).json()
    assert history[-1]["action"] == "promote" and history[-1]["to_version"] == v2
    assert "canary" in history[-1]["reason"] and history[-1]["forced"] is True


def test_slow_candidate_is_rolled_back_on_latency(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    env.engine.delay_for = {v2: 0.05}
    start(env, v2, 50, min_requests=5, max_latency_ratio=3.0)
    for i in range(30):
        chat(env, f"user-{i}")
    (ended,) = check(env)
    assert ended["status"] == "rolled_back"
    assert str(ended["reason"]).startswith("latency ratio ")


def test_negative_feedback_rolls_the_canary_back(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    start(env, v2, 50, min_requests=5, max_negative_feedback_rate=0.3, max_latency_ratio=100.0)
    for i in range(40):
        version, cid = chat(env, f"user-{i}")
        rating = "down" if version == v2 else "up"
        resp = env.client.post(
            f"/v1/chat/completions/{cid}/feedback", json={"rating": rating}, headers=env.auth()
        )
        assert resp.status_code == 201, resp.text
    (ended,) = check(env)
    assert str(ended["reason"]).startswith("negative feedback rate 1.00 > 0.30 over ")
    assert show(env)["active"] is None


def test_stop_sends_everyone_back_and_is_recorded(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    start(env, v2, 100)
    assert chat(env, "alice")[0] == v2
    resp = env.client.delete(
        CANARY.format(t="acme", a="support") + "?reason=not+today",
        headers={**ADMIN, "x-loopgate-actor": "ops"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "stopped"
    assert resp.json()["reason"] == "stopped by ops: not today"
    assert chat(env, "alice")[0] == v1
    again = env.client.delete(CANARY.format(t="acme", a="support"), headers=ADMIN)
    assert again.status_code == 404


def test_invalid_canaries_are_refused_with_4xx(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    url = CANARY.format(t="acme", a="support")
    assert (
        env.client.post(url, json={"version": v2, "percent": 10}, headers=ADMIN).status_code == 404
    )
    promote(env, v1)

    def status(body: dict[str, object]) -> int:
        return env.client.post(url, json=body, headers=ADMIN).status_code

    assert status({"version": v2, "percent": 0}) == 400
    assert status({"version": v2, "percent": 100.5}) == 400
    assert status({"version": v2, "percent": 10, "thresholds": {"max_error_rate": 2}}) == 400
    assert status({"version": v2, "percent": 10, "thresholds": {"min_requests": 0}}) == 400
    assert status({"version": v2, "percent": 10, "colour": "red"}) == 400
    assert status({"version": "av-nope", "percent": 10}) == 404
    assert status({"version": v1, "percent": 10}) == 409  # the alias already serves it
    assert env.client.post(url + "/promote", json={}, headers=ADMIN).status_code == 404
    assert (
        env.client.get(url, headers={"Authorization": f"Bearer {env.acme_key}"}).status_code == 403
    )
    assert status({"version": v2, "percent": 10}) == 201
    assert status({"version": v2, "percent": 20}) == 409  # one active canary per alias
    env.client.delete(url, headers=ADMIN)
    v3 = upload(env, tmp_path, 3)
    assert (
        env.client.post(f"/admin/tenants/acme/adapters/{v3}/retire", headers=ADMIN).status_code
        == 200
    )
    assert status({"version": v3, "percent": 10}) == 409  # retired


def test_tenants_cannot_see_or_use_each_others_canaries(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    theirs = upload(env, tmp_path, 3, tenant="globex")
    promote(env, v1)
    body = {"version": theirs, "percent": 50}
    resp = env.client.post(CANARY.format(t="acme", a="support"), json=body, headers=ADMIN)
    assert resp.status_code == 404  # globex's version does not exist for acme
    start(env, v2, 50)
    assert env.client.get(CANARY.format(t="globex", a="support"), headers=ADMIN).status_code == 404
    assert show(env, "globex", "globex-private") == {"active": None, "history": []}
    gone = env.client.delete(CANARY.format(t="globex", a="support"), headers=ADMIN)
    assert gone.status_code == 404
    assert show(env)["active"] is not None


def test_active_canaries_are_reloaded_at_start(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    record = start(env, v2, 100)
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, transport=env.engine.transport())) as other:
        resp = other.post(
            "/v1/chat/completions",
            json={"model": "support", "messages": [{"role": "user", "content": "hi"}]},
            headers=env.auth(),
        )
        assert resp.status_code == 200
        assert resp.headers["x-loopgate-adapter-version"] == v2
        seen = other.get(CANARY.format(t="acme", a="support"), headers=ADMIN).json()
        assert seen["active"]["canary"]["id"] == record["id"]


def test_a_canary_ended_by_another_gateway_stops_here_at_the_next_check(
    env: Env, tmp_path: Path
) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    record = start(env, v2, 100)
    assert chat(env, "alice")[0] == v2
    store = env.client.app.state.gateway.store
    ended = env.client.blocking_portal.call(
        store.end_canary, str(record["id"]), "stopped", "stopped by ops elsewhere"
    )
    assert ended is True
    assert check(env) == []  # nothing rolled back here: it just goes away
    assert chat(env, "alice")[0] == v1
    assert show(env)["history"][0]["reason"] == "stopped by ops elsewhere"  # type: ignore[index]
