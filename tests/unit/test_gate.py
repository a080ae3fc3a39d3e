"""Paired statistics on hand-computed examples, and the promotion gate's decisions."""

from __future__ import annotations

import numpy as np
import pytest

from evals.gate import GatePolicy, decide
from evals.stats import (
    LatencySummary,
    compare_paired,
    mean_interval,
    summarize_latency,
    summarize_scores,
)


def test_paired_comparison_on_a_hand_computed_example() -> None:
    comparison = compare_paired([1.0, 0.5, 1.0, 0.0], [0.5, 0.5, 0.0, 0.25])
    assert comparison.candidate_mean == pytest.approx(0.625)
    assert comparison.reference_mean == pytest.approx(0.3125)
    assert comparison.deltas == (0.5, 0.0, 1.0, -0.25)
    assert comparison.mean_delta == pytest.approx(0.3125)
    assert (comparison.wins, comparison.ties, comparison.losses) == (2, 1, 1)
    assert comparison.n == 4
    assert comparison.ci.low <= comparison.mean_delta <= comparison.ci.high
    assert comparison.ci.level == 0.95


def test_interval_contains_the_true_mean_on_a_clear_case() -> None:
    # Deltas spread evenly around 0.3 (their mean), shuffled so order cannot matter.
    deltas = 0.3 + np.linspace(-0.1, 0.1, 101)
    np.random.default_rng(7).shuffle(deltas)
    interval = mean_interval(deltas.tolist())
    assert 0.3 in interval
    assert 0.28 < interval.low < 0.3 < interval.high < 0.32


def test_interval_is_seeded_and_narrows_with_lower_confidence() -> None:
    values = [0.1, 0.4, -0.2, 0.3, 0.0, 0.5, 0.2]
    assert mean_interval(values) == mean_interval(values)
    wide, narrow = mean_interval(values, 0.99), mean_interval(values, 0.8)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_one_case_and_zero_variance_do_not_crash() -> None:
    single = compare_paired([0.7], [0.2])
    assert single.mean_delta == pytest.approx(0.5)
    assert (single.ci.low, single.ci.high) == pytest.approx((0.5, 0.5))
    same = compare_paired([1.0, 1.0, 0.0], [1.0, 1.0, 0.0])
    assert (same.mean_delta, same.ci.low, same.ci.high) == (0.0, 0.0, 0.0)
    assert same.ties == 3
    shifted = compare_paired([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    assert shifted.ci.low == pytest.approx(0.1)
    assert shifted.ci.high == pytest.approx(0.1)


def test_bad_inputs_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="one score per case"):
        compare_paired([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        compare_paired([], [])
    with pytest.raises(ValueError, match="NaN"):
        compare_paired([float("nan")], [0.0])
    with pytest.raises(ValueError, match="confidence"):
        mean_interval([0.1, 0.2], 1.5)


def test_score_summary_and_latency_percentiles() -> None:
    summary = summarize_scores([0.0, 1.0, 1.0, 1.0])
    assert summary.mean == 0.75
    assert summary.n == 4
    assert summary.ci.low <= 0.75 <= summary.ci.high
    latency = summarize_latency([float(ms) for ms in range(1, 101)])
    assert latency.p50 == pytest.approx(50.5)
    assert latency.p95 == pytest.approx(95.05)
    assert summarize_latency([12.0]) == LatencySummary(12.0, 12.0, 1)
    with pytest.raises(ValueError, match=">= 0"):
        summarize_latency([-1.0])


def _noisy(center: float, spread: float, n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [center + float(x) for x in rng.uniform(-spread, spread, size=n)]


LIVE = [0.5] * 40
GUARD_BASE = [0.9] * 30
GUARD_SAME = compare_paired(GUARD_BASE, GUARD_BASE)


def _failed(decision_checks: list[tuple[str, bool]]) -> set[str]:
    return {name for name, passed in decision_checks if not passed}


def test_a_clear_winner_is_promoted() -> None:
    tenant = compare_paired(_noisy(0.7, 0.05, 40, seed=1), LIVE)
    decision = decide(GatePolicy(), tenant, GUARD_SAME)
    assert decision.promote
    assert [c.name for c in decision.checks] == [
        "tenant_ci",
        "tenant_improvement",
        "guard_regression",
        "latency",
    ]
    assert all(c.passed for c in decision.checks)
    assert len(decision.reasons) == 4
    assert "is above 0" in decision.reasons[0]
    assert "meets the required 0.050" in decision.reasons[1]


def test_a_worse_candidate_is_refused() -> None:
    tenant = compare_paired(_noisy(0.4, 0.05, 40, seed=2), LIVE)
    decision = decide(GatePolicy(), tenant, GUARD_SAME)
    assert not decision.promote
    assert _failed([(c.name, c.passed) for c in decision.checks]) == {
        "tenant_ci",
        "tenant_improvement",
    }
    assert any("not reliably better than live" in r for r in decision.reasons)
    assert any("below the required 0.050" in r for r in decision.reasons)


def test_a_candidate_equal_within_noise_is_refused() -> None:
    deltas = _noisy(0.0, 0.1, 40, seed=3)
    tenant = compare_paired([0.5 + d for d in deltas], LIVE)
    decision = decide(GatePolicy(), tenant, GUARD_SAME)
    assert not decision.promote
    ci_check = decision.checks[0]
    assert ci_check.name == "tenant_ci"
    assert not ci_check.passed
    assert "reaches 0 or below" in ci_check.detail


def test_a_reliable_but_too_small_gain_is_refused() -> None:
    tenant = compare_paired([0.52] * 40, LIVE)
    decision = decide(GatePolicy(min_improvement=0.05), tenant, GUARD_SAME)
    assert not decision.promote
    assert decision.checks[0].passed
    assert decision.reasons == [
        "tenant suite: candidate 0.520 vs live 0.500, gain +0.020 is below the required 0.050"
    ]


def test_a_guard_regression_beyond_the_limit_is_refused() -> None:
    tenant = compare_paired(_noisy(0.7, 0.05, 40, seed=4), LIVE)
    guard = compare_paired([0.85] * 30, GUARD_BASE)
    decision = decide(GatePolicy(max_guard_regression=0.02), tenant, guard)
    assert not decision.promote
    assert decision.reasons == [
        "guard suite: candidate 0.850 vs reference 0.900 (-0.050) drops more than the allowed "
        "0.020: the candidate lost general capability"
    ]
    # A drop exactly at the limit is allowed, despite float rounding in the means.
    at_limit = compare_paired([0.88] * 30, GUARD_BASE)
    assert decide(GatePolicy(max_guard_regression=0.02), tenant, at_limit).promote


def test_latency_is_checked_only_when_limited() -> None:
    tenant = compare_paired(_noisy(0.7, 0.05, 40, seed=5), LIVE)
    slow, live = LatencySummary(130.0, 200.0, 50), LatencySummary(100.0, 150.0, 50)
    assert decide(GatePolicy(), tenant, GUARD_SAME, slow, live).promote
    limited = GatePolicy(max_latency_increase=0.2)
    decision = decide(limited, tenant, GUARD_SAME, slow, live)
    assert not decision.promote
    assert decision.reasons == [
        "latency: candidate p50 130.0 vs live 100.0 exceeds the +20% limit (<= 120.0 allowed)"
    ]
    assert decide(limited, tenant, GUARD_SAME, LatencySummary(115.0, 150.0, 50), live).promote
    unmeasured = decide(limited, tenant, GUARD_SAME)
    assert not unmeasured.promote
    assert "not measured" in unmeasured.reasons[0]


def test_one_case_is_too_few_to_promote() -> None:
    decision = decide(GatePolicy(), compare_paired([1.0], [0.0]), GUARD_SAME)
    assert not decision.promote
    assert "only 1 case" in decision.reasons[0]


def test_the_policy_confidence_is_used_for_the_interval() -> None:
    # Mean gain 0.1 on 8 cases with spread: reliable at 80%, not at 99.9%.
    tenant = compare_paired(
        [0.5 + d for d in [0.35, -0.15, 0.3, -0.1, 0.25, 0.05, 0.1, 0.0]], [0.5] * 8
    )
    assert decide(GatePolicy(confidence=0.8), tenant, GUARD_SAME).checks[0].passed
    strict = decide(GatePolicy(confidence=0.999), tenant, GUARD_SAME).checks[0]
    assert not strict.passed
    assert "99.9% CI" in strict.detail


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_improvement": -0.1}, "min_improvement must be between 0 and 1"),
        ({"max_guard_regression": 2.0}, "max_guard_regression must be between 0 and 1"),
        ({"max_latency_increase": -0.5}, "max_latency_increase must be >= 0"),
        ({"confidence": 1.0}, "confidence must be between 0 and 1"),
    ],
)
def test_policy_is_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GatePolicy(**kwargs)
