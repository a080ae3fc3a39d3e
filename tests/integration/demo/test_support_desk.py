"""The support-desk demo's data: held-out questions are new to the loop, and the format check.

The scenario itself (`python -m demo.support_desk`) is not part of the suite yet: it does not pass
its targets on this machine (see the README's demo paragraph)."""

from __future__ import annotations

from demo.support_desk import compliant, support_questions


def test_held_out_questions_never_appear_in_the_traffic() -> None:
    traffic = {q.question for q in support_questions(120, seed=1)}
    held_out = support_questions(48, seed=1, held_out=True)
    assert len(traffic) == 120 and not traffic & {q.question for q in held_out}
    assert all(compliant(q.ticket) for q in held_out)
    assert not compliant("Sure! Please restart your printer. TICKET | category: hardware")
