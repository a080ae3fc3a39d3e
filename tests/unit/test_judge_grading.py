"""Judge checks in eval runs: the worker's judge client (timeouts, retries, errors as grades),
the gate's judge rule, the calibration report, and whole runs through the evals worker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from evals.calibration import Labeled, calibrate
from evals.checks import JudgeCheck
from evals.gate import check_judge
from evals.graders import JudgeError, grade_async
from evals.judging import JudgeAsk, JudgeClient, JudgeScores
from tests.unit.conftest import ADMIN, Env
from tests.unit.console_client import sign_in
from tests.unit.fake_engine import chat_body
from tests.unit.test_adapters_api import upload
from tests.unit.test_evals_api import run_eval

CHECK = JudgeCheck(rubric="Is the answer polite?", scale=10)


def scripted(*replies: httpx.Response | Exception) -> tuple[JudgeClient, list[httpx.Request]]:
    """A judge client whose gateway answers `replies` in turn (the network edge, faked)."""
    sent: list[httpx.Request] = []
    left = list(replies)

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        reply = left.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://gw.test")
    return JudgeClient(client, backoff_s=0.0, timeout_s=5.0), sent


def ok(text: str) -> httpx.Response:
    return httpx.Response(200, json={"content": text, "judge": "alias:x", "latency_ms": 1.0})


def failed(status: int, message: str = "busy", **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message}}, headers=headers)


async def test_a_judge_call_is_retried_on_429_and_5xx_then_graded() -> None:
    judges, sent = scripted(
        failed(429, "slow down", **{"retry-after": "0"}),
        failed(502),
        httpx.ReadTimeout("late"),
        ok("Very polite.\nScore: 8"),
    )
    grade = await grade_async(CHECK, "q", "a", None, judges.for_run("ten_1", "ev-1"))
    assert (grade.score, grade.error) == (0.8, False)
    assert len(sent) == 4 and sent[0].url.path == "/admin/tenants/ten_1/judge/replies"
    assert json.loads(sent[0].content) == {
        "prompt": json.loads(sent[0].content)["prompt"],
        "run_id": "ev-1",
    }


async def test_a_failing_judge_grades_the_check_as_an_error_never_raises() -> None:
    judges, sent = scripted(*[failed(503, "engine restarting")] * 4)
    grade = await grade_async(CHECK, "q", "a", None, judges.for_run("ten_1", None))
    assert grade.error and grade.score == 0.0
    assert "after 4 attempts" in grade.reason and "engine restarting" in grade.reason
    assert len(sent) == 4
    # a refusal (e.g. the external judge's 401 as the gateway's 409) is not retried
    judges, sent = scripted(failed(409, "the judge endpoint answered 401"))
    grade = await grade_async(CHECK, "q", "a", None, judges.for_run("ten_1", None))
    assert grade.error and "answered 401" in grade.reason and len(sent) == 1
    with pytest.raises(JudgeError):  # the client itself raises; only the grader absorbs it
        await scripted(failed(404, "no judge"))[0].ask("ten_1", JudgeAsk("prompt"))


def test_the_gate_rule_on_judge_scores() -> None:
    assert check_judge(None, None).passed
    assert check_judge(None, JudgeScores(0.1, 3, 0)).passed  # no minimum: informative only
    assert check_judge(0.7, JudgeScores(0.7, 3, 0)).passed
    low = check_judge(0.7, JudgeScores(0.6, 3, 0))
    assert not low.passed and "below the required 0.700" in low.detail
    assert not check_judge(0.7, None).passed  # a minimum with no judge check ran: refused
    broken = check_judge(None, JudgeScores(0.9, 3, 1, "judge error: timed out"))
    assert not broken.passed and "1 of 4" in broken.detail and "timed out" in broken.detail


def test_calibration_against_hand_counts() -> None:
    # judge pass/fail x reference pass/fail = 2 / 1 / 0 / 1 (threshold 0.5)
    labeled = [
        Labeled(0.9, 1.0, 0.5),
        Labeled(0.8, 1.0, 0.5),
        Labeled(0.7, 0.0, 0.5),  # the judge passes what the reference checks fail
        Labeled(0.1, 0.0, 0.5),
    ]
    c = calibrate(labeled)
    assert c is not None and c.n == 4 and c.agreement == 0.75
    assert (c.confusion.both_pass, c.confusion.judge_only) == (2, 1)
    assert (c.confusion.reference_only, c.confusion.both_fail) == (0, 1)
    # p_o = 3/4; p_judge = 3/4, p_ref = 1/2 -> p_e = 3/8 + 1/8 = 1/2; kappa = (3/4-1/2)/(1/2)
    assert c.kappa == pytest.approx(0.5)
    assert c.spearman is not None and c.spearman > 0.8
    same = calibrate([Labeled(1.0, 1.0, 0.5), Labeled(0.9, 1.0, 0.5)])
    assert same is not None and same.agreement == 1.0 and same.kappa is None  # chance = 1
    assert calibrate([]) is None


# -- whole runs through the evals worker ---------------------------------------------------
ANSWER = re.compile(r"Answer to grade:\n(.*?)\n\n", re.DOTALL)


def engine_with_judge(judge_fails: bool = False) -> object:
    """The adapter answers 'ANSWER: …', base 'I am not sure.'; the judge (the base alias)
    scores 9 an answer starting 'ANSWER:' and 2 any other, or refuses every judge prompt."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        prompt = str(body["messages"][-1]["content"])
        if prompt.startswith("You are grading"):
            if judge_fails:  # refused by the engine: no retry helps (see the client tests)
                error = {"message": "judge prompt too long", "type": "BadRequestError"}
                return httpx.Response(400, json={"error": error})
            found = ANSWER.search(prompt)
            good = found is not None and found.group(1).startswith("ANSWER:")
            return httpx.Response(200, json=chat_body(f"Score: {9 if good else 2}"))
        lora = str(body["model"]).startswith("lg-")
        text = "ANSWER: escalated" if lora else "I am not sure."
        return httpx.Response(200, json=chat_body(text, model=str(body["model"])))

    return handle


def suite(n: int, checks: list[dict[str, object]], reference: str | None = None) -> str:
    lines = []
    for i in range(n):
        case: dict[str, object] = {
            "id": f"q{i}",
            "messages": [{"role": "user", "content": f"Ticket {i}: my printer is broken"}],
            "checks": checks,
        }
        if reference is not None:
            case["reference"] = reference if i % 2 == 0 else "something else entirely"
        lines.append(json.dumps(case))
    return "\n".join(lines)


def setup(env: Env, tmp_path: Path, min_judge_score: float | None = None) -> str:
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)
    policy = {"min_judge_score": min_judge_score} if min_judge_score is not None else {}
    assert env.client.put("/admin/tenants/acme/gate-policy", json=policy, headers=ADMIN).is_success
    return str(upload(env, tmp_path, 1)["id"])


JUDGED = [{"type": "judge", "rubric": "Does it start with ANSWER:?", "scale": 10}]


@pytest.mark.usefixtures("evals_worker")
def test_a_suite_without_a_configured_judge_fails_saying_how_to_fix_it(
    env: Env, tmp_path: Path
) -> None:
    version = setup(env, tmp_path)
    run = run_eval(env, version, suite(4, JUDGED))
    assert run["status"] == "failed" and "PUT /admin/tenants/" in str(run["error"])


@pytest.mark.usefixtures("evals_worker")
def test_judge_checks_grade_a_run_and_count_in_the_gate(env: Env, tmp_path: Path) -> None:
    version = setup(env, tmp_path, min_judge_score=0.8)
    env.engine.custom = engine_with_judge()  # type: ignore[assignment]
    assert env.client.put("/admin/tenants/acme/judge", json={"alias": "smollm2"}, headers=ADMIN)
    run = run_eval(env, version, suite(6, JUDGED))
    assert run["status"] == "done", run
    judge = run["summary"]["judge"]  # type: ignore[index]
    assert judge["systems"]["candidate"] == {
        "mean": pytest.approx(0.9),
        "graded": 6,
        "errors": 0,
        "first_error": None,
    }
    assert judge["systems"]["base"]["mean"] == pytest.approx(0.2)
    assert judge["calibration"] is None  # no reference-based checks: nothing to calibrate on
    checks = {c["name"]: c for c in run["decision"]["checks"]}  # type: ignore[index]
    assert checks["judge"]["passed"] and "0.900" in checks["judge"]["detail"]
    assert run["promote"] is True
    results = env.client.get(f"/admin/tenants/acme/evals/{run['id']}/results", headers=ADMIN)
    tenant = [r for r in results.json()["data"] if r["suite"] == "tenant"]
    assert all("judge scored" in r["reasons"] for r in tenant)
    # judge calls went through serving as the judge, and are never trained on
    rows = env.client.get("/v1/chat/completions?limit=100", headers=env.auth()).json()["data"]
    judged = [r for r in rows if r["metadata"].get("loopgate_judge") == run["id"]]
    assert len(judged) == 12 and all(r["loopgate"]["do_not_train"] for r in judged)
    # the console shows the judge's scores beside the run's
    sign_in(env.client, "admin-secret")
    page = env.client.get(f"/console/evals/{run['id']}?tenant=acme")
    assert page.status_code == 200 and 'id="eval-judge-scores"' in page.text
    assert "0.900" in page.text and "No labeled cases" in page.text


@pytest.mark.usefixtures("evals_worker")
def test_a_failing_judge_is_graded_as_errors_and_the_gate_refuses(env: Env, tmp_path: Path) -> None:
    version = setup(env, tmp_path)
    env.engine.custom = engine_with_judge(judge_fails=True)  # type: ignore[assignment]
    env.client.put("/admin/tenants/acme/judge", json={"alias": "smollm2"}, headers=ADMIN)
    checks = [*JUDGED, {"type": "regex", "pattern": "^ANSWER:"}]
    run = run_eval(env, version, suite(4, checks))
    assert run["status"] == "done", run  # the run goes on
    candidate = run["summary"]["judge"]["systems"]["candidate"]  # type: ignore[index]
    assert (candidate["graded"], candidate["errors"]) == (0, 4)
    assert "judge error" in candidate["first_error"]
    assert "judge prompt too long" in candidate["first_error"]
    judge_check = [c for c in run["decision"]["checks"] if c["name"] == "judge"]  # type: ignore[index]
    assert judge_check and not judge_check[0]["passed"] and run["promote"] is False
    results = env.client.get(f"/admin/tenants/acme/evals/{run['id']}/results", headers=ADMIN)
    tenant = [r for r in results.json()["data"] if r["suite"] == "tenant"]
    assert len(tenant) == 12 and all("judge error" in r["reasons"] for r in tenant)
    candidate_rows = [r for r in tenant if r["system"] == "candidate"]
    assert all("/^ANSWER:/ found" in r["reasons"] and r["score"] == 0.5 for r in candidate_rows)


@pytest.mark.usefixtures("evals_worker")
def test_calibration_on_a_labeled_suite_is_stored_with_the_run(env: Env, tmp_path: Path) -> None:
    """6 cases, references alternating 'ANSWER: escalated' / another text, graded by `exact`
    and the judge. Candidate ('ANSWER: escalated'): the judge passes all 6, exact passes 3.
    Base ('I am not sure.'): the judge fails all 6, exact fails all 6. Over the 12 answers:
    both pass 3, judge only 3, reference only 0, both fail 6 -> agreement 9/12; p_judge 1/2,
    p_ref 1/4 -> p_e = 1/8 + 3/8 = 1/2, kappa = (3/4 - 1/2) / (1/2) = 1/2."""
    version = setup(env, tmp_path)
    env.engine.custom = engine_with_judge()  # type: ignore[assignment]
    env.client.put("/admin/tenants/acme/judge", json={"alias": "smollm2"}, headers=ADMIN)
    labeled = suite(6, [*JUDGED, {"type": "exact"}], reference="ANSWER: escalated")
    run = run_eval(env, version, labeled)
    assert run["status"] == "done", run
    c = run["summary"]["judge"]["calibration"]  # type: ignore[index]
    assert c["n"] == 12 and c["agreement"] == pytest.approx(0.75)
    assert c["confusion"] == {"both_pass": 3, "judge_only": 3, "reference_only": 0, "both_fail": 6}
    assert c["kappa"] == pytest.approx(0.5)
