"""The promotion controller (gateway.rollout) through the admin API, the serving path and the
store, against the fake engine: the controller's tick is driven directly (no sleeps)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.canary import bucket, in_canary
from gateway.sequential import fixed_sample_size
from store import Dataset, EvalRun
from store.records import ShadowPair
from tests.unit.conftest import ADMIN, Env, make_settings
from tests.unit.test_canary import chat, promote, upload

# The controller's own loop stays asleep: each test drives its ticks.
pytestmark = pytest.mark.parametrize(
    "overrides", [{"rollout_tick_s": 3600.0, "rollout_lease_s": 7200.0}]
)
ROLLOUTS = "/admin/tenants/{t}/aliases/{a}/rollouts"
FAST = {
    "shadow": {"min_pairs": 6},
    "canary": {
        "steps": [5, 50],
        "min_requests": 10,
        "error_p0": 0.02,
        "error_p1": 0.2,
        "max_p50_ratio": 20.0,  # a loaded test host's latency is noise, not the subject here
        "max_p95_ratio": 20.0,
    },
}


def gw(env: Env) -> Any:
    return env.client.app.state.gateway


def call(env: Env, fn: Any, *args: Any) -> Any:
    return env.client.blocking_portal.call(fn, *args)


def tenant_id(env: Env, name: str = "acme") -> str:
    return str(call(env, gw(env).store.get_tenant, name).id)


def passing_eval(env: Env, version: str, live: str | None, promote_it: bool = True) -> str:
    """A finished eval run of `version` against `live` with the gate's verdict (the evals
    worker's output, written as it writes it)."""
    run = EvalRun(
        id="ev-" + secrets.token_hex(6),
        tenant_id=tenant_id(env),
        alias="support",
        candidate=version,
        live=live,
        status="queued",
        created_by="test",
        created_at=time.time(),
        spec="{}",
    )
    store = gw(env).store
    call(env, store.add_eval_run, run)
    decision = json.dumps({"reasons": ["tenant suite: better" if promote_it else "not better"]})

    async def finish() -> None:
        await store.finish_eval_run(run.id, "done", promote=promote_it, decision=decision)

    call(env, finish)
    return run.id


def start(env: Env, version: str, eval_id: str, policy: dict[str, Any] | None = None) -> dict:
    body = {"version": version, "eval_id": eval_id, "policy": policy or FAST, "reason": "try"}
    resp = env.client.post(ROLLOUTS.format(t="acme", a="support"), json=body, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def show(env: Env, rollout_id: str, tenant: str = "acme") -> dict:
    resp = env.client.get(ROLLOUTS.format(t=tenant, a="support") + f"/{rollout_id}", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def tick(env: Env) -> list[str]:
    return list(call(env, gw(env).rollouts.tick))


def add_pairs(env: Env, version: str, live: str, verdicts: list[str]) -> None:
    """Graded shadow pairs, as the shadow's mirror and the evals worker's grader store them."""
    store, tid = gw(env).store, tenant_id(env)
    shadow = next(s for s in call(env, store.shadows_of, tid, "support") if s.status == "active")
    for i, verdict in enumerate(verdicts):
        pair = ShadowPair(
            id="shp_" + secrets.token_hex(6),
            shadow_id=shadow.id,
            tenant_id=tid,
            alias="support",
            live_completion_id=chat(env, f"shadowed-{i}")[1],
            request_id="req",
            live_version=live,
            candidate_version=version,
            live_answer="a",
            candidate_answer="b",
            candidate_error=None,
            candidate_latency_ms=5.0,
            created_at=time.time(),
        )
        call(env, store.add_shadow_pair, pair)
        call(env, store.grade_shadow_pair, pair.id, verdict, 0.5, 0.5, "")


def users(env: Env, percent: float, canary: bool, n: int) -> Iterator[str]:
    """`n` end users that land in (or out of) a canary of `percent` on acme/support."""
    tid, found, i = tenant_id(env), 0, 0
    while found < n:
        user = f"user-{i}"
        i += 1
        if in_canary(percent, bucket(tid, "support", user)) == canary:
            found += 1
            yield user


def traffic(env: Env, percent: float, n: int = 12) -> list[tuple[str, str]]:
    """`n` requests from canary users and `n` from live users: (version served, completion)."""
    served = [chat(env, u) for u in users(env, percent, True, n)]
    return served + [chat(env, u) for u in users(env, percent, False, n)]


def setup(env: Env, tmp_path: Path) -> tuple[str, str]:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    policy = {"tenant_checks": [{"type": "length", "max_words": 50}]}  # shadow pairs' grading
    resp = env.client.put("/admin/tenants/acme/gate-policy", json=policy, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return v1, v2


def history(env: Env) -> list[dict]:
    resp = env.client.get("/admin/tenants/acme/aliases/support/history", headers=ADMIN)
    return list(resp.json())


def tick_until(env: Env, rollout_id: str, done: Any, limit: int = 10) -> dict:
    for _ in range(limit):
        tick(env)
        found = show(env, rollout_id)
        if done(found):
            return found
    raise AssertionError(show(env, rollout_id))


# -- the stage walk ---------------------------------------------------------------------------


def test_a_good_candidate_walks_every_stage_to_full(env: Env, tmp_path: Path) -> None:
    v1, v2 = setup(env, tmp_path)
    rollout = start(env, v2, passing_eval(env, v2, v1))
    assert (rollout["status"], rollout["stage"]) == ("running", "offline")
    assert tick(env) == [rollout["id"]]
    assert show(env, rollout["id"])["stage"] == "shadow"
    tick(env)  # the shadow starts
    add_pairs(env, v2, v1, ["win"] * 6 + ["tie"])
    found = tick_until(env, rollout["id"], lambda r: r["stage"] == "canary")
    shadow_advance = found["decisions"][-1]
    assert shadow_advance["action"] == "advance" and shadow_advance["stage"] == "shadow"
    assert shadow_advance["evidence"]["signals"][0]["outcome"] == "good"
    for percent in (5, 50):
        found = tick_until(env, rollout["id"], lambda r: r["canary_id"] is not None)
        assert found["percent"] == percent
        served = traffic(env, percent)
        assert {v for v, _ in served} == {v1, v2}  # both arms really served
        step = found["canary_id"]
        found = tick_until(
            env, rollout["id"], lambda r, s=step: r["canary_id"] != s or r["stage"] != "canary"
        )
    assert found["stage"] == "full", found["decisions"][-3:]
    assert found["percent"] == 50  # the last step's canary stays
    assert found["decisions"][-1]["action"] == "advance"
    found = tick_until(env, rollout["id"], lambda r: r["status"] != "running")
    assert found["status"] == "promoted" and found["stage"] == "done"
    assert chat(env, "anyone")[0] == v2  # the alias serves the candidate now
    actions = [(d["stage"], d["action"]) for d in found["decisions"] if d["action"] != "hold"]
    assert actions == [
        ("offline", "start"),
        ("offline", "advance"),
        ("shadow", "advance"),
        ("canary", "advance"),
        ("canary", "advance"),
        ("full", "promote"),
    ]
    events = history(env)
    kinds = [e["action"] for e in events]
    assert kinds.count("rollout-advance") == 4 and kinds[-1] == "rollout-promote"
    assert "promote" in kinds[kinds.index("rollout-start") :]  # the Swapper's own flip
    canary_step = next(
        json.loads(e["reason"])
        for e in events
        if e["action"] == "rollout-advance" and "canary_id" in e["reason"]
    )
    assert canary_step["rollout"] == rollout["id"]
    error = next(s for s in canary_step["evidence"]["signals"] if s["name"] == "error_rate")
    assert error["outcome"] == "good" and error["n"] >= 10 and error["bad"] == 0


# -- roll backs -------------------------------------------------------------------------------


def test_a_candidate_that_loses_in_shadow_is_rolled_back(env: Env, tmp_path: Path) -> None:
    v1, v2 = setup(env, tmp_path)
    rollout = start(env, v2, passing_eval(env, v2, v1))
    tick(env)
    tick(env)  # shadow started
    add_pairs(env, v2, v1, ["loss"] * 9 + ["win"])
    found = tick_until(env, rollout["id"], lambda r: r["status"] != "running")
    assert (found["status"], found["stage"]) == ("rolled_back", "shadow")
    last = found["decisions"][-1]
    assert last["action"] == "rollback" and "lost 9 of 10" in last["detail"]
    shadows = call(env, gw(env).store.shadows_of, tenant_id(env), "support")
    assert [s.status for s in shadows] == ["stopped"]
    assert chat(env, "anyone")[0] == v1  # the alias never moved
    assert history(env)[-1]["action"] == "rollout-rollback"


@pytest.mark.parametrize(
    ("verdicts", "action"),
    [(["tie"] * 9 + ["win"], "advance"), (["tie"] * 8 + ["loss", "loss"], "rollback")],
)
def test_a_shadow_of_ties_ends_at_max_pairs_by_the_sign_of_its_evidence(
    env: Env, tmp_path: Path, verdicts: list[str], action: str
) -> None:
    """Checks that cannot tell the two apart tie: the test would never decide, so at
    `max_pairs` graded pairs the candidate advances unless it lost more than it won."""
    v1, v2 = setup(env, tmp_path)
    policy = {**FAST, "shadow": {"min_pairs": 6, "max_pairs": 10}}
    rollout = start(env, v2, passing_eval(env, v2, v1), policy)
    tick(env)
    tick(env)  # shadow started
    add_pairs(env, v2, v1, verdicts[:9])
    tick(env)
    assert show(env, rollout["id"])["stage"] == "shadow"  # 9 graded: still waiting
    add_pairs(env, v2, v1, verdicts[9:])
    found = tick_until(
        env, rollout["id"], lambda r: r["stage"] != "shadow" or r["status"] != "running"
    )
    last = next(d for d in reversed(found["decisions"]) if d["stage"] == "shadow")
    assert last["action"] == action, last
    assert "10 graded shadow pairs without a decision" in last["detail"]


def test_a_tenant_without_reference_free_checks_skips_the_shadow(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)  # the tenant's gate policy has no tenant_checks: nothing grades a pair
    rollout = start(env, v2, passing_eval(env, v2, v1))
    found = tick_until(env, rollout["id"], lambda r: r["stage"] == "canary")
    skipped = next(d for d in found["decisions"] if d["stage"] == "shadow")
    assert skipped["action"] == "advance"
    assert skipped["detail"].startswith("the shadow stage is skipped: no checks to grade")
    assert call(env, gw(env).store.shadows_of, tenant_id(env), "support") == []


def test_a_policy_with_max_pairs_below_min_pairs_is_refused(env: Env, tmp_path: Path) -> None:
    _, v2 = setup(env, tmp_path)
    body = {"version": v2, "policy": {"shadow": {"min_pairs": 30, "max_pairs": 20}}}
    resp = env.client.post(ROLLOUTS.format(t="acme", a="support"), json=body, headers=ADMIN)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "policy.shadow.max_pairs"


def test_the_gate_refusal_rolls_back_at_the_offline_stage(env: Env, tmp_path: Path) -> None:
    v1, v2 = setup(env, tmp_path)
    rollout = start(env, v2, passing_eval(env, v2, v1, promote_it=False))
    found = tick_until(env, rollout["id"], lambda r: r["status"] != "running")
    assert (found["status"], found["stage"]) == ("rolled_back", "offline")
    assert "the gate refused" in found["decisions"][-1]["detail"]


NO_SHADOW = {
    "shadow": {"enabled": False},
    "canary": {"steps": [50], "min_requests": 5, "max_p50_ratio": 20.0, "max_p95_ratio": 20.0},
}


def to_canary(env: Env, tmp_path: Path) -> tuple[str, str, dict]:
    v1, v2 = setup(env, tmp_path)
    rollout = start(env, v2, passing_eval(env, v2, v1), NO_SHADOW)
    found = tick_until(env, rollout["id"], lambda r: r["canary_id"] is not None)
    return v1, v2, found


def test_canary_errors_roll_back_early_and_no_client_sees_one(env: Env, tmp_path: Path) -> None:
    v1, v2, rollout = to_canary(env, tmp_path)
    env.engine.fail_for = (v2,)  # the candidate answers 500: retried on live
    served = traffic(env, 50, n=6)
    assert {v for v, _ in served} == {v1}  # every client got its answer, from live
    found = tick_until(env, rollout["id"], lambda r: r["status"] != "running")
    assert (found["status"], found["stage"]) == ("rolled_back", "canary")
    error = next(
        s for s in found["decisions"][-1]["evidence"]["signals"] if s["name"] == "error_rate"
    )
    assert error["outcome"] == "bad" and error["bad"] == error["n"] == 6
    # A fixed-size test with the same error rates needs many more requests than it used.
    assert error["n"] < fixed_sample_size(error["p0"], error["p1"], 0.05, 0.1) / 10
    canaries = call(env, gw(env).store.canaries_of, tenant_id(env), "support")
    assert [c.status for c in canaries] == ["stopped"]
    assert {chat(env, u)[0] for u in users(env, 50, True, 5)} == {v1}  # none on the candidate


def test_negative_feedback_on_the_canary_rolls_it_back(env: Env, tmp_path: Path) -> None:
    _, v2, rollout = to_canary(env, tmp_path)
    served = traffic(env, 50, n=25)
    for version, completion in served:
        if version == v2:
            resp = env.client.post(
                f"/v1/chat/completions/{completion}/feedback",
                json={"rating": "down"},
                headers=env.auth(),
            )
            assert resp.status_code == 201, resp.text
    found = tick_until(env, rollout["id"], lambda r: r["status"] != "running")
    assert found["status"] == "rolled_back"
    signal = next(
        s for s in found["decisions"][-1]["evidence"]["signals"] if s["name"] == "negative_feedback"
    )
    assert signal["outcome"] == "bad" and signal["bad"] == signal["n"]
    assert signal["n"] < fixed_sample_size(signal["p0"], signal["p1"], 0.05, 0.1)


# -- lineage ----------------------------------------------------------------------------------


def test_a_version_trained_on_erased_data_is_refused_and_a_withdrawal_stops_one(
    env: Env, tmp_path: Path
) -> None:
    v1, v2 = setup(env, tmp_path)
    tainted = lineage_version(env, v2, "erin")
    resp = env.client.post("/admin/tenants/acme/erase", json={"end_user": "erin"}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    body = {"version": tainted, "eval_id": passing_eval(env, tainted, v1)}
    refused = env.client.post(ROLLOUTS.format(t="acme", a="support"), json=body, headers=ADMIN)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "trained_on_erased"
    # A clean version starts; its user withdraws consent mid-rollout: stopped, rolled back.
    clean = lineage_version(env, v2, "olga")
    rollout = start(env, clean, passing_eval(env, clean, v1))
    tick(env)
    assert show(env, rollout["id"])["status"] == "running"
    resp = env.client.post("/admin/tenants/acme/opt-out", json={"end_user": "olga"}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    found = tick_until(env, rollout["id"], lambda r: r["status"] != "running")
    assert found["status"] == "rolled_back"
    assert "consent was withdrawn" in found["decisions"][-1]["detail"]
    again = env.client.post(
        ROLLOUTS.format(t="acme", a="support"),
        json={"version": clean, "eval_id": passing_eval(env, clean, v1)},
        headers=ADMIN,
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "consent_withdrawn"


def lineage_version(env: Env, like: str, user: str) -> str:
    """A version (the files of `like`) trained on a snapshot of `user`'s captured traffic."""
    store, tid = gw(env).store, tenant_id(env)
    resp = env.client.post(
        "/v1/chat/completions",
        json={"model": "support", "messages": [{"role": "user", "content": "q"}], "user": user},
        headers=env.auth(),
    )
    completion = resp.json()["id"]
    dataset = Dataset(
        id="ds-" + secrets.token_hex(8),
        tenant_id=tid,
        content_hash=secrets.token_hex(8),
        source="traffic",
        source_file_id=None,
        train_count=1,
        eval_count=1,
        preference_count=0,
        path=str(Path(gw(env).settings.data_dir) / "none"),
        stats="{}",
        created_by="test",
        created_at=time.time(),
    )
    call(env, store.add_dataset, dataset, [completion])
    base = call(env, store.get_adapter, like)
    version = msgspec.structs.replace(
        base, id="av-" + secrets.token_hex(6), content_hash=secrets.token_hex(8),
        dataset_id=dataset.id, status="candidate",
    )  # fmt: skip
    call(env, store.add_adapter, version)
    return version.id


# -- one controller, restarts, isolation --------------------------------------------------------


def test_one_of_two_gateways_advances_and_another_resumes_after_a_restart(
    env: Env, tmp_path: Path
) -> None:
    v1, v2 = setup(env, tmp_path)
    rollout = start(env, v2, passing_eval(env, v2, v1))
    settings = make_settings(tmp_path, rollout_tick_s=3600.0, rollout_lease_s=7200.0)
    with TestClient(create_app(settings, transport=env.engine.transport())) as other:
        second = other.app.state.gateway.rollouts
        assert tick(env) == [rollout["id"]]  # the first claims it...
        assert other.blocking_portal.call(second.tick) == []  # ...the second may not
        assert show(env, rollout["id"])["stage"] == "shadow"
        env.stop()  # a restart of the first: its lease is given back at shutdown
        assert other.blocking_portal.call(second.tick) == [rollout["id"]]
        resp = other.get(
            ROLLOUTS.format(t="acme", a="support") + f"/{rollout['id']}", headers=ADMIN
        )
        resumed = resp.json()
        assert resumed["stage"] == "shadow" and resumed["shadow_id"] is not None
        assert resumed["owner"] == second.owner


def test_another_tenants_rollout_is_not_found(env: Env, tmp_path: Path) -> None:
    v1, v2 = setup(env, tmp_path)
    rollout = start(env, v2, passing_eval(env, v2, v1))
    for method, path in (
        ("get", ROLLOUTS.format(t="globex", a="support") + f"/{rollout['id']}"),
        ("post", ROLLOUTS.format(t="globex", a="support") + f"/{rollout['id']}/abort"),
        ("get", ROLLOUTS.format(t="acme", a="other") + f"/{rollout['id']}"),
    ):
        resp = getattr(env.client, method)(path, headers=ADMIN)
        assert resp.status_code == 404, (path, resp.text)
    aborted = env.client.post(
        ROLLOUTS.format(t="acme", a="support") + f"/{rollout['id']}/abort",
        json={"reason": "changed my mind"},
        headers=ADMIN,
    )
    assert aborted.status_code == 200 and aborted.json()["status"] == "aborted"
    assert tick(env) == []  # nothing left to advance


@pytest.mark.parametrize(
    ("policy", "param"),
    [
        ({"canary": {"steps": [25, 5]}}, "policy.canary.steps"),
        ({"canary": {"error_p0": 0.2, "error_p1": 0.1}}, "canary.error_p0"),
    ],
)
def test_a_policy_that_makes_no_sense_is_a_400(
    env: Env, tmp_path: Path, policy: dict, param: str
) -> None:
    v1, v2 = setup(env, tmp_path)
    body = {"version": v2, "eval_id": passing_eval(env, v2, v1), "policy": policy}
    resp = env.client.post(ROLLOUTS.format(t="acme", a="support"), json=body, headers=ADMIN)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
