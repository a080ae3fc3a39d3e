"""The support-desk demo end to end on a real stack: the loop lifts the ticket format on held-out
questions without costing the guard suite, and a candidate trained on wrong targets is refused."""

from __future__ import annotations

import pytest

from demo.support_desk import ScenarioConfig, compliant, render, run_scenario, support_questions
from tests.integration.conftest import ADMIN_KEY, Stack, start_gateway, stop_gateway
from tests.integration.training.conftest import TRAINING_ENV


def test_held_out_questions_never_appear_in_the_traffic() -> None:
    traffic = {q.question for q in support_questions(120, seed=1)}
    held_out = support_questions(48, seed=1, held_out=True)
    assert len(traffic) == 120 and not traffic & {q.question for q in held_out}
    assert all(compliant(q.ticket) for q in held_out)
    assert not compliant("Sure! Please restart your printer. TICKET | category: hardware")


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_the_loop_lifts_the_ticket_format_and_refuses_a_bad_candidate(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    stack: Stack = start_gateway(tmp_path_factory.mktemp("demo-stack"), TRAINING_ENV)
    try:
        result = run_scenario(stack.url, ADMIN_KEY, ScenarioConfig())
    finally:
        stop_gateway(stack)
    print(render(result))
    assert result.base_rate <= 0.10, render(result)
    assert result.promoted_rate >= 0.90, render(result)
    assert result.good.status == "promoted", result.good.reasons
    assert result.guard_loss <= 0.02, result.good.guard_means
    assert result.bad.status == "refused", result.bad.reasons
    assert any("tenant suite" in reason for reason in result.bad.reasons), result.bad.reasons
