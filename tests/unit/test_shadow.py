"""Shadow evaluation through the admin API and the serving path, against the fake engine."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from evals.gate import GatePolicy, check_shadow
from evals.policy import PolicyIn
from evals.shadow_grading import ShadowGrader, question_of, verdict_of
from evals.worker import EvalsWorker
from gateway.shadow import SHADOW_PRIORITY, sampled
from store import ShadowPair, ShadowSummary
from tests.unit.conftest import ADMIN, Env
from tests.unit.fake_engine import FakeEngine, chat_body
from tests.unit.test_canary import promote, upload

SHADOW = "/admin/tenants/{t}/aliases/{a}/shadow"
PARIS = [{"type": "regex", "pattern": "Paris"}]


@dataclass
class GatedEngine(FakeEngine):
    """The fake engine, holding requests for models named `held` until `open` is called;
    `answers` gives a model's reply by the end of its name."""

    held: str = "\x00"
    waiting: int = 0  # requests held at the gate now
    opened: bool = False
    answers: dict[str, str] = field(default_factory=dict)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle_held)  # type: ignore[arg-type]

    async def handle_held(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("completions"):
            model = str(json.loads(request.content)["model"])
            if model.endswith(self.held) and not self.opened:
                self.waiting += 1
                while not self.opened:  # the test opens the gate from its own thread
                    await asyncio.sleep(0.002)
                self.waiting -= 1
            for suffix, text in self.answers.items():
                if model.endswith(suffix) and not json.loads(request.content).get("stream"):
                    self.requests.append(request)
                    return httpx.Response(200, json=chat_body(text=text, model=model))
        return self.handle(request)


@pytest.fixture
def engine() -> GatedEngine:
    return GatedEngine()


def start(env: Env, version: str, **body: object) -> httpx.Response:
    payload = {"version": version, "share": 1.0, "checks": PARIS, **body}
    return env.client.put(SHADOW.format(t="acme", a="support"), json=payload, headers=ADMIN)


def show(env: Env, tenant: str = "acme", alias: str = "support") -> dict[str, object]:
    resp = env.client.get(SHADOW.format(t=tenant, a=alias), headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def ask(env: Env, stream: bool = False, **extra: object) -> httpx.Response:
    body = {"model": "support", "messages": [{"role": "user", "content": "capital?"}], **extra}
    resp = env.client.post(
        "/v1/chat/completions", json={**body, "stream": stream}, headers=env.auth()
    )
    assert resp.status_code == 200, resp.text
    return resp


def wait_for(what: str, ready: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def pairs(env: Env, version: str) -> list[ShadowPair]:
    store = env.client.app.state.gateway.store
    tenant = env.client.blocking_portal.call(store.get_tenant, "acme")
    got: list[ShadowPair] = env.client.blocking_portal.call(
        store.shadow_pairs, tenant.id, "support", version, 1000
    )
    return got


def bodies_to(env: Env, version: str) -> list[dict[str, object]]:
    return [b for b in env.engine.bodies() if str(b["model"]).endswith(version)]


def two_versions(env: Env, tmp_path: Path) -> tuple[str, str]:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    return v1, v2


# --- pure parts ------------------------------------------------------------------------------


def test_sampling_is_a_stable_share_of_completion_ids() -> None:
    ids = [f"chatcmpl-{i:08x}" for i in range(10_000)]
    assert all(sampled(i, 1.0) for i in ids)
    assert not any(sampled(i, 0.0) for i in ids)
    share = sum(sampled(i, 0.2) for i in ids)
    assert 1_850 < share < 2_150
    assert [sampled(i, 0.5) for i in ids[:50]] == [sampled(i, 0.5) for i in ids[:50]]


def test_verdicts_and_questions() -> None:
    assert verdict_of(0.5, 1.0) == "win"
    assert verdict_of(1.0, 0.5) == "loss"
    assert verdict_of(0.5, 0.5 + 1e-12) == "tie"
    assert verdict_of(0.0, None) == "loss"
    asked = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user",
             "content": [{"type": "text", "text": "Capital?"}]}]}  # fmt: skip
    assert question_of(json.dumps(asked)) == "system: Be brief.\n\nuser: Capital?"
    assert question_of(json.dumps({"prompt": "Once upon"})) == "Once upon"
    assert question_of(None) == "" and question_of("not json") == ""


# --- through the gateway ---------------------------------------------------------------------


def test_every_request_is_mirrored_after_the_client_has_its_answer(
    env: Env, tmp_path: Path, engine: GatedEngine
) -> None:
    v1, v2 = two_versions(env, tmp_path)
    before = ask(env).json()
    resp = start(env, v2)
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "active" and resp.json()["share"] == 1.0
    assert any(name.endswith(v2) for name in engine.loras)  # loaded at start
    engine.held = v2  # the candidate answers nothing until the gate opens
    plain = ask(env, temperature=0.3, tools=[{"type": "function", "function": {"name": "f"}}])
    streamed = ask(env, stream=True)
    # The client got both whole answers from the live version while the candidate still holds
    # the mirrored requests: nobody waited for the shadow.
    assert plain.headers["x-loopgate-adapter-version"] == v1
    assert plain.json()["choices"] == before["choices"] and plain.json()["model"] == "support"
    assert b"[DONE]" in streamed.content and b"Paris" in streamed.content
    wait_for("both mirrored requests at the engine", lambda: engine.waiting == 2)
    assert pairs(env, v2) == []
    engine.opened = True
    wait_for("two pairs", lambda: len(pairs(env, v2)) == 2)
    live = [b for b in bodies_to(env, v1) if b.get("messages") == before_messages()]
    mirrored = bodies_to(env, v2)
    assert len(mirrored) == 2
    by_tools = next(b for b in mirrored if "tools" in b)
    assert by_tools["temperature"] == 0.3 and by_tools["messages"] == before_messages()
    assert all(b["stream"] is False and "stream_options" not in b for b in mirrored)
    assert all(b.get("priority") == SHADOW_PRIORITY for b in mirrored)
    salts = {b.get("cache_salt") for b in [*mirrored, *live]}
    assert len(live) == 3 and len(salts) == 1 and None not in salts  # the tenant's own salt
    got = pairs(env, v2)
    assert {p.live_version for p in got} == {v1}
    assert {p.candidate_version for p in got} == {v2}
    assert {p.live_answer for p in got} == {"Paris.", "The capital is Paris."}
    assert all(p.candidate_answer and p.candidate_error is None for p in got)
    assert all(p.candidate_latency_ms is not None and p.verdict is None for p in got)


def before_messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": "capital?"}]


def test_budget_caps_requests_in_flight_and_per_minute(
    env: Env, tmp_path: Path, engine: GatedEngine
) -> None:
    _, v2 = two_versions(env, tmp_path)
    assert start(env, v2, max_inflight=2, per_minute=3).status_code == 201
    engine.held = v2
    for _ in range(5):
        ask(env)
    wait_for("two held shadow requests", lambda: engine.waiting == 2)
    summary = show(env)["summary"]
    assert isinstance(summary, dict) and summary["skipped_for_budget"] == 3
    engine.opened = True
    wait_for("two pairs", lambda: len(pairs(env, v2)) == 2)
    for _ in range(3):  # the minute's third is left; then it is spent
        ask(env)
    wait_for("three pairs", lambda: len(pairs(env, v2)) == 3)
    summary = show(env)["summary"]
    assert isinstance(summary, dict)
    assert (summary["pairs"], summary["skipped_for_budget"]) == (3, 5)
    assert len(bodies_to(env, v2)) == 3


@pytest.mark.parametrize("overrides", [{"engine_scheduling_policy": "fcfs"}])
def test_pairs_are_graded_by_the_evals_worker_and_summarised(
    env: Env, tmp_path: Path, engine: GatedEngine, evals_worker: EvalsWorker
) -> None:
    v1, v2 = two_versions(env, tmp_path)
    engine.answers = {v1: "It is Paris.", v2: "London, I think."}
    assert start(env, v2).status_code == 201
    for _ in range(3):
        ask(env)
    wait_for("three graded pairs", lambda: graded(env) == 3)
    assert all("priority" not in b for b in bodies_to(env, v2))  # the engine has no priorities
    summary = show(env)["summary"]
    assert summary == {
        "pairs": 3,
        "graded": 3,
        "wins": 0,
        "losses": 3,
        "ties": 0,
        "ungradable": 0,
        "candidate_errors": 0,
        "skipped_for_budget": 0,
        "mean_live_score": 1.0,
        "mean_candidate_score": 0.0,
    }
    (one, *_) = pairs(env, v2)
    assert one.verdict == "loss" and "not found" in one.reasons
    # a better candidate on the next version wins
    env.client.delete(SHADOW.format(t="acme", a="support"), headers=ADMIN)
    v3 = upload(env, tmp_path, 3)
    engine.answers = {v1: "London.", v3: "Paris!"}
    assert start(env, v3, checks=[{"type": "regex", "pattern": "Paris"}]).status_code == 201
    ask(env)
    ask(env)
    wait_for("v3's pairs graded", lambda: show(env)["summary"]["graded"] == 2)  # type: ignore[index]
    summary = show(env)["summary"]
    assert isinstance(summary, dict) and (summary["wins"], summary["losses"]) == (2, 0)


def graded(env: Env) -> int:
    summary = show(env)["summary"]
    return int(summary["graded"]) if isinstance(summary, dict) else 0


def test_a_failing_candidate_loses_and_the_client_never_notices(
    env: Env, tmp_path: Path, engine: GatedEngine
) -> None:
    v1, v2 = two_versions(env, tmp_path)
    engine.fail_for = (v2,)
    assert start(env, v2).status_code == 201
    assert ask(env).headers["x-loopgate-adapter-version"] == v1
    wait_for("the pair", lambda: len(pairs(env, v2)) == 1)
    (pair,) = pairs(env, v2)
    assert pair.candidate_answer is None and pair.candidate_error
    grader = ShadowGrader(env.client.app.state.gateway.store)  # the worker's code path
    assert env.client.blocking_portal.call(grader.grade_pending) == 1
    summary = ShadowSummary(**show(env)["summary"])  # type: ignore[arg-type]
    assert (summary.losses, summary.candidate_errors, summary.graded) == (1, 1, 1)


def test_shadow_traffic_is_not_captured_metered_or_in_usage(
    env: Env, tmp_path: Path, engine: GatedEngine
) -> None:
    v1, v2 = two_versions(env, tmp_path)
    limits = {"requests_per_minute": 4}
    resp = env.client.put("/admin/tenants/acme/limits", json=limits, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    assert start(env, v2).status_code == 201
    for _ in range(4):  # the shadow requests would push the tenant past its limit
        ask(env)
    wait_for("four pairs", lambda: len(pairs(env, v2)) == 4)
    db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
    rows = db.execute("SELECT adapter_version FROM completions").fetchall()
    assert rows == [(v1,)] * 4  # the live answers only
    listed = env.client.get("/v1/chat/completions?limit=100", headers=env.auth()).json()
    assert len(listed["data"]) == 4
    assert len(bodies_to(env, v2)) == 4


def test_a_request_not_stored_is_not_mirrored(env: Env, tmp_path: Path) -> None:
    _, v2 = two_versions(env, tmp_path)
    assert start(env, v2).status_code == 201
    ask(env, store=False)
    ask(env)
    wait_for("the stored request's pair", lambda: len(pairs(env, v2)) == 1)
    assert len(bodies_to(env, v2)) == 1


def test_stop_ends_mirroring_and_unloads_the_candidate(env: Env, tmp_path: Path) -> None:
    _, v2 = two_versions(env, tmp_path)
    assert start(env, v2).status_code == 201
    url = SHADOW.format(t="acme", a="support")
    again = start(env, v2)
    assert again.status_code == 409  # one shadow per alias
    resp = env.client.delete(url + "?reason=enough", headers={**ADMIN, "x-loopgate-actor": "ops"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "stopped" and resp.json()["reason"] == "stopped by ops: enough"
    ask(env)
    assert bodies_to(env, v2) == []
    wait_for("the candidate unloaded", lambda: not any(n.endswith(v2) for n in env.engine.loras))
    report = show(env)
    assert report["active"] is None and len(report["history"]) == 1  # type: ignore[arg-type]
    assert env.client.delete(url, headers=ADMIN).status_code == 404


def test_invalid_shadows_are_refused(env: Env, tmp_path: Path) -> None:
    v1, v2 = two_versions(env, tmp_path)

    def status(**body: object) -> int:
        return start(env, **{"version": v2, **body}).status_code  # type: ignore[arg-type]

    assert status(share=0) == 400
    assert status(share=1.5) == 400
    assert status(max_inflight=0) == 400
    assert status(colour="red") == 400
    assert status(checks=[{"type": "exact"}]) == 400  # needs a reference live traffic lacks
    assert status(checks=None) == 400  # the tenant's policy has no reference-free checks
    assert status(version="av-nope") == 404
    assert status(version=v1) == 409  # the alias serves it already
    bad = env.client.put(SHADOW.format(t="acme", a="nope"), json={"version": v2}, headers=ADMIN)
    assert bad.status_code == 404
    tenant_key = {"Authorization": f"Bearer {env.acme_key}"}
    assert (
        env.client.get(SHADOW.format(t="acme", a="support"), headers=tenant_key).status_code == 403
    )
    policy = {"tenant_checks": [{"type": "normalized"}, {"type": "length", "max_words": 50}]}
    put = env.client.put("/admin/tenants/acme/gate-policy", json=policy, headers=ADMIN)
    assert put.status_code == 200, put.text
    assert status(checks=None) == 201  # the policy's reference-free checks are the suite
    active = show(env)["active"]
    assert isinstance(active, dict)
    (check,) = json.loads(str(active["checks"]))
    assert (check["type"], check["max_words"]) == ("length", 50)


def test_tenants_cannot_see_or_shadow_each_others_aliases(env: Env, tmp_path: Path) -> None:
    _, v2 = two_versions(env, tmp_path)
    theirs = upload(env, tmp_path, 3, tenant="globex")
    assert start(env, theirs).status_code == 404  # globex's version does not exist for acme
    assert start(env, v2).status_code == 201
    for method in ("GET", "DELETE"):
        url = SHADOW.format(t="globex", a="support")
        assert env.client.request(method, url, headers=ADMIN).status_code == 404
    body = {"version": v2, "checks": PARIS}
    put = env.client.put(SHADOW.format(t="globex", a="globex-private"), json=body, headers=ADMIN)
    assert put.status_code == 404
    assert show(env, "globex", "globex-private") == {"active": None, "summary": None, "history": []}
    assert show(env)["active"] is not None


# --- the promotion gate's online evidence ----------------------------------------------------


def summary_of(wins: int, losses: int, ties: int) -> ShadowSummary:
    n = wins + losses + ties
    return ShadowSummary(n, n, wins, losses, ties, 0, 0, 0, None, None)


def test_the_gate_reads_shadow_evidence_when_its_policy_asks() -> None:
    policy = PolicyIn(min_shadow_pairs=10, max_shadow_loss_rate=0.3).gate()
    few = check_shadow(policy, summary_of(3, 1, 1))
    assert not few.passed and few.detail.startswith("shadow: 5 graded pairs, 10 required")
    assert not check_shadow(policy, None).passed
    worse = check_shadow(policy, summary_of(3, 5, 2))
    assert not worse.passed and "loss rate 0.50 exceeds the allowed 0.30" in worse.detail
    fine = check_shadow(policy, summary_of(6, 3, 1))
    assert fine.passed and fine.detail == (
        "shadow: 6 wins, 3 losses, 1 ties over 10 pairs: loss rate 0.30 within the allowed 0.30"
    )
    assert PolicyIn().gate().min_shadow_pairs is None  # off by default: no shadow check
    with pytest.raises(ValueError, match="max_shadow_loss_rate"):
        GatePolicy(max_shadow_loss_rate=1.5)
