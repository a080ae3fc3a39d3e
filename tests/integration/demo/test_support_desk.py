"""The support-desk demo's data (held-out questions new to the loop, the format check) and how it
reads an eval's results.

The scenario itself (`python -m demo.support_desk`) is not part of the suite: on this machine its
candidates lift the ticket format from 0% to 100% on held-out questions but lose 15-18 of the 118
guard cases, so the gate (rightly) refuses them; see the README's demo paragraph."""

from __future__ import annotations

from demo.support_desk import compliant, guard_cases_lost, support_questions


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
