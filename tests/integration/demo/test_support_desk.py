"""The support-desk demo's data (held-out questions new to the loop, general questions apart from
the guard suite, the format check), how it reads an eval's results and judges its targets.

The scenario itself (`python -m demo.support_desk`, exit 1 when a target is missed) is not part of
the suite: it met every target in its last run, but its guard margin is a case or two and moves with
the machine and the traffic draw (docs/benchmarks.md has the runs). The loop it drives is
tested on the real stack in tests/integration/training/test_loop_e2e.py."""

from __future__ import annotations

import re

import pytest

from demo.live import LiveTally, RolloutOutcome
from demo.support_desk import (
    GENERAL,
    SOLO_REASON,
    STACK_ENV,
    HeldOutRow,
    LoopOutcome,
    ScenarioConfig,
    ScenarioResult,
    compliant,
    guard_cases_lost,
    live_questions,
    loop_body,
    solo_loop_body,
    support_questions,
    targets_missed,
    wants_answer,
    wants_ticket,
)
from evals.suite import load_guard_suite


def test_held_out_questions_never_appear_in_the_traffic() -> None:
    traffic = {q.question for q in support_questions(120, seed=1)}
    held_out = support_questions(48, seed=1, held_out=True)
    assert len(traffic) == 120 and not traffic & {q.question for q in held_out}
    assert all(compliant(q.ticket) for q in held_out)
    assert not compliant("Sure! Please restart your printer. TICKET | category: hardware")


def test_guard_cases_lost_are_those_live_passed_and_the_candidate_failed() -> None:
    def row(case: str, system: str, passed: bool) -> dict[str, object]:
        return {"suite": "guard", "case_id": case, "system": system, "passed": passed,
                "answer": f"{system} on {case}"}  # fmt: skip

    results = [
        row("a", "live", True), row("a", "candidate", False),  # lost
        row("b", "live", False), row("b", "candidate", False),  # never passed
        row("c", "live", True), row("c", "candidate", True),
        {**row("d", "live", True), "suite": "tenant"},
        {**row("d", "candidate", False), "suite": "tenant"},
    ]  # fmt: skip
    assert guard_cases_lost(results) == ["a: candidate on a"]


def test_general_questions_are_not_the_guard_suites_and_grade_their_own_corrections() -> None:
    guard = {case.question.strip().lower() for case in load_guard_suite().cases}
    assert len(GENERAL) >= 150
    for q in GENERAL:
        assert q["question"].strip().lower() not in guard, q
        assert re.search(q["expect"], q["correction"], re.IGNORECASE), q


def _rolled(
    status: str, stage: str, walked: list[tuple[str, str]], failed: int = 0
) -> RolloutOutcome:
    decisions = [{"stage": st, "action": a, "detail": ""} for st, a in walked]
    return RolloutOutcome(status, stage, decisions, LiveTally(failed=["boom"] * failed), 60.0)


WALK = [("offline", "start"), ("offline", "advance"), ("shadow", "advance"),
        ("canary", "advance"), ("canary", "advance"), ("full", "promote")]  # fmt: skip


def test_targets_missed_names_each_broken_promise() -> None:
    def outcome(status: str, live: float, candidate: float) -> LoopOutcome:
        means = {"live": live, "candidate": candidate}
        return LoopOutcome(status, [], {}, "ev-1", {}, means if live else {})

    row = HeldOutRow("q", "base", "promoted")
    solo_back = _rolled("rolled_back", "canary", [*WALK[:3], ("canary", "rollback")])
    good = ScenarioResult(
        [row], 0.0, 1.0, outcome("rolling_out", 0.95, 0.94), outcome("refused", 0.9, 0.5),
        {"good_total": 600}, _rolled("promoted", "done", WALK), outcome("rolling_out", 0.9, 0.9),
        solo_back,
    )  # fmt: skip
    assert good.good_status == "promoted"
    assert targets_missed(good) == []
    bad = ScenarioResult(
        [row], 0.25, 0.5, outcome("rolling_out", 0.95, 0.90), outcome("promoted", 0.9, 0.9),
        {"good_total": 1000}, _rolled("rolled_back", "shadow", WALK[:2], failed=2),
        outcome("rolling_out", 0.9, 0.9), _rolled("promoted", "done", WALK, failed=1),
    )  # fmt: skip
    missed = targets_missed(bad)
    assert len(missed) == 9, missed
    assert "guard loss 0.050 > 0.020" in missed
    assert "3 live requests failed while the rollouts ran" in missed
    assert "the good candidate was rolled_back" in missed
    assert any(m.startswith("the good candidate did not walk every stage") for m in missed)
    assert "the one-user candidate was not rolled back on live evidence: promoted at done" in missed
    assert targets_missed(bad, timed=False) == [m for m in missed if "took" not in m]
    no_eval = ScenarioResult(
        [row], 0.0, 1.0, outcome("failed", 0.0, 0.0), outcome("refused", 0.9, 0.5),
        {"good_total": 600}, None, outcome("refused", 0.9, 0.9), None,
    )  # fmt: skip
    assert targets_missed(no_eval) == [
        "the good candidate was failed",
        "the good candidate did not walk every stage: "
        "[('canary', 'advance'), ('full', 'promote'), ('offline', 'advance'), "
        "('shadow', 'advance')]",
        "the one-user candidate was not rolled back on live evidence: no rollout: its loop "
        "ended refused",
        "no guard suite result (the eval did not run)",
    ]


def test_the_solo_desk_overrides_only_the_poisoning_guards_and_says_why() -> None:
    body = solo_loop_body(ScenarioConfig())
    dataset = body.pop("dataset")
    assert body == {**loop_body(ScenarioConfig()), "suffix": "solo"}
    assert dataset == {"max_author_share": 1.0, "keep_flagged": True, "reason": SOLO_REASON}


def test_live_users_rate_by_what_their_desk_wants() -> None:
    ticket = support_questions(1, seed=1)[0].ticket
    assert (wants_ticket(ticket), wants_ticket("Try restarting it.")) == ("up", "down")
    assert (wants_answer(ticket), wants_answer("Try restarting it.")) == ("down", "up")
    traffic = {q.question for q in support_questions(84, seed=1)}
    live = live_questions(ScenarioConfig())
    assert len(set(live)) == len(live) >= 60
    assert not traffic & set(live)  # new wording, same kinds


def test_the_scenario_runs_on_the_products_defaults() -> None:
    """No recipe: the loop is started without hyperparameters and the stack's settings change
    nothing that is trained or served (every setting the demo sets is operational)."""
    body = loop_body(ScenarioConfig())
    assert body == {"alias": "support", "suffix": "desk", "seed": 1}  # it ends in a rollout
    operational = {
        "LOOPGATE_JOB_HEARTBEAT_S",
        "LOOPGATE_ENGINE_CPU_KVCACHE_GB",
        "LOOPGATE_AUTH_CACHE_TTL_S",
    }
    assert set(STACK_ENV) <= operational
    tried = loop_body(ScenarioConfig(epochs=2, quantization="nf4"))
    assert tried["hyperparameters"] == {"n_epochs": 2, "quantization": "nf4"}
    with pytest.raises(ValueError, match="quantization"):
        ScenarioConfig(quantization="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epochs"):
        ScenarioConfig(epochs=0)
