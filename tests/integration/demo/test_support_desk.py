"""The support-desk demo's data (held-out questions new to the loop, general questions apart from
the guard suite, the format check), how it reads an eval's results and judges its targets.

The scenario itself (`python -m demo.support_desk`, exit 1 when a target is missed) is not part of
the suite: it met every target in its last run, but its guard margin is a case or two and moves with
the machine and the traffic draw (docs/benchmarks.md has the runs). The loop it drives is
tested on the real stack in tests/integration/training/test_loop_e2e.py."""

from __future__ import annotations

import re

import pytest

from demo.support_desk import (
    GENERAL,
    STACK_ENV,
    HeldOutRow,
    LoopOutcome,
    ScenarioConfig,
    ScenarioResult,
    compliant,
    guard_cases_lost,
    loop_body,
    support_questions,
    targets_missed,
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


def test_targets_missed_names_each_broken_promise() -> None:
    def outcome(status: str, live: float, candidate: float) -> LoopOutcome:
        means = {"live": live, "candidate": candidate}
        return LoopOutcome(status, [], {}, "ev-1", {}, means if live else {})

    row = HeldOutRow("q", "base", "promoted")
    good = ScenarioResult(
        [row], 0.0, 1.0, outcome("promoted", 0.95, 0.94), outcome("refused", 0.9, 0.5), {}
    )
    assert targets_missed(good, 600) == []
    bad = ScenarioResult(
        [row], 0.25, 0.5, outcome("refused", 0.95, 0.90), outcome("promoted", 0.9, 0.9), {}
    )
    missed = targets_missed(bad, 1000)
    assert len(missed) == 6 and "guard loss 0.050 > 0.020" in missed
    assert targets_missed(bad, None) == [m for m in missed if not m.startswith("wall time")]
    no_eval = ScenarioResult(
        [row], 0.0, 1.0, outcome("failed", 0.0, 0.0), outcome("refused", 0.9, 0.5), {}
    )
    assert targets_missed(no_eval, 600) == [
        "the good candidate was failed",
        "no guard suite result (the eval did not run)",
    ]


def test_the_scenario_runs_on_the_products_defaults() -> None:
    """No recipe: the loop is started without hyperparameters and the stack's settings change
    nothing that is trained or served (every setting the demo sets is operational)."""
    body = loop_body(ScenarioConfig())
    assert body == {"alias": "support", "suffix": "desk", "seed": 1, "end": "promote"}
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
