"""The promotion gate: a tenant's policy and the pure decision whether a candidate goes live.

A candidate is promoted only when every check passes:
1. tenant_ci: the lower bound of the CI of (candidate - live) on the tenant suite is > 0,
   on at least 2 paired cases (so a candidate equal within noise is refused);
2. tenant_improvement: the mean improvement is >= `min_improvement` (absolute score);
3. guard_regression: the guard suite mean drops by at most `max_guard_regression` against its
   reference (base or live);
4. latency: candidate p50 <= live p50 * (1 + `max_latency_increase`), when a limit is set;
5. judge (when `min_judge_score` is set, or when a judge check could not be graded): the
   candidate's mean LLM-judge score on the tenant suite is >= `min_judge_score`, and every
   judge grade was had (an errored one leaves the score unknown, so the gate refuses);
6. shadow (when `min_shadow_pairs` or `max_shadow_loss_rate` is set): online evidence from
   shadow evaluation (gateway.shadow): at least that many graded pairs of the candidate's and
   the live answer to the same live request, and at most that share of them lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evals.policy import GatePolicy

__all__ = ["GateCheck", "GateDecision", "GatePolicy", "decide"]

if TYPE_CHECKING:  # the statistics (scipy) run in the evals worker; a policy is light
    from evals.judging import JudgeScores
    from evals.stats import Comparison, Interval, LatencySummary
    from store import ShadowSummary

# Scores are means of floats: a delta meant to equal a limit must not fail by rounding.
_EPSILON = 1e-9


@dataclass(frozen=True)
class GateCheck:
    """One rule of the gate, whether the candidate met it, and why, in words."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateDecision:
    """Promote or not; `reasons` are the failed checks' details, or all details on promotion."""

    promote: bool
    reasons: list[str]
    checks: list[GateCheck]


def _pct(level: float) -> str:
    return f"{level * 100:g}%"


def _tenant_interval(tenant: Comparison, confidence: float) -> Interval:
    if math.isclose(tenant.ci.level, confidence):
        return tenant.ci
    from evals.stats import mean_interval

    return mean_interval(tenant.deltas, confidence)


def check_tenant_ci(tenant: Comparison, confidence: float) -> GateCheck:
    ci = _tenant_interval(tenant, confidence)
    span = f"{tenant.mean_delta:+.3f} ({_pct(ci.level)} CI {ci.low:+.3f} to {ci.high:+.3f})"
    if tenant.n < 2:
        detail = f"tenant suite: only {tenant.n} case, too few to tell improvement from noise"
        return GateCheck("tenant_ci", False, detail)
    if ci.low > 0.0:
        return GateCheck("tenant_ci", True, f"tenant suite: candidate - live = {span} is above 0")
    detail = (
        f"tenant suite: candidate - live = {span} reaches 0 or below, "
        "so the candidate is not reliably better than live"
    )
    return GateCheck("tenant_ci", False, detail)


def check_tenant_improvement(tenant: Comparison, min_improvement: float) -> GateCheck:
    scores = f"candidate {tenant.candidate_mean:.3f} vs live {tenant.reference_mean:.3f}"
    gain = f"{tenant.mean_delta:+.3f}"
    if tenant.mean_delta >= min_improvement - _EPSILON:
        detail = f"tenant suite: {scores}, gain {gain} meets the required {min_improvement:.3f}"
        return GateCheck("tenant_improvement", True, detail)
    detail = f"tenant suite: {scores}, gain {gain} is below the required {min_improvement:.3f}"
    return GateCheck("tenant_improvement", False, detail)


def check_guard(guard: Comparison, max_regression: float) -> GateCheck:
    scores = f"candidate {guard.candidate_mean:.3f} vs reference {guard.reference_mean:.3f}"
    change = f"({guard.mean_delta:+.3f})"
    if guard.mean_delta >= -max_regression - _EPSILON:
        detail = f"guard suite: {scores} {change}, within the allowed drop of {max_regression:.3f}"
        return GateCheck("guard_regression", True, detail)
    detail = (
        f"guard suite: {scores} {change} drops more than the allowed {max_regression:.3f}: "
        "the candidate lost general capability"
    )
    return GateCheck("guard_regression", False, detail)


def check_latency(
    limit: float | None, candidate: LatencySummary | None, live: LatencySummary | None
) -> GateCheck:
    if limit is None:
        return GateCheck("latency", True, "latency: no limit set")
    if candidate is None or live is None:
        detail = f"latency: a +{limit:.0%} p50 limit is set but latency was not measured"
        return GateCheck("latency", False, detail)
    allowed = live.p50 * (1.0 + limit)
    scores = f"candidate p50 {candidate.p50:.1f} vs live {live.p50:.1f}"
    if candidate.p50 <= allowed + _EPSILON:
        detail = f"latency: {scores}, within +{limit:.0%} (<= {allowed:.1f})"
        return GateCheck("latency", True, detail)
    detail = f"latency: {scores} exceeds the +{limit:.0%} limit (<= {allowed:.1f} allowed)"
    return GateCheck("latency", False, detail)


def check_judge(min_score: float | None, judge: JudgeScores | None) -> GateCheck:
    """The candidate's judge score against the minimum (and no judge grade missing)."""
    if judge is not None and judge.errors:
        detail = (
            f"judge: {judge.errors} of {judge.graded + judge.errors} judge grades of the "
            f"candidate failed ({judge.first_error}), so its judge score is not known"
        )
        return GateCheck("judge", False, detail)
    if min_score is None:
        return GateCheck("judge", True, "judge: no minimum judge score set")
    if judge is None or judge.mean is None:
        detail = f"judge: a minimum judge score of {min_score:.3f} is set but no judge check ran"
        return GateCheck("judge", False, detail)
    scores = f"candidate judge score {judge.mean:.3f} over {judge.graded} grades"
    if judge.mean >= min_score - _EPSILON:
        return GateCheck("judge", True, f"judge: {scores} meets the required {min_score:.3f}")
    return GateCheck("judge", False, f"judge: {scores} is below the required {min_score:.3f}")


def check_shadow(policy: GatePolicy, shadow: ShadowSummary | None) -> GateCheck:
    """Enough graded shadow pairs, and few enough of them lost by the candidate."""
    n = shadow.graded if shadow is not None else 0
    least, most = policy.min_shadow_pairs, policy.max_shadow_loss_rate
    if n == 0 or (least is not None and n < least):
        detail = (
            f"shadow: {n} graded pairs, {least or 1} required: mirror live traffic to the "
            "candidate (PUT .../aliases/{alias}/shadow) and let the evals worker grade it"
        )
        return GateCheck("shadow", False, detail)
    assert shadow is not None
    rate = shadow.losses / n
    counts = f"{shadow.wins} wins, {shadow.losses} losses, {shadow.ties} ties over {n} pairs"
    if most is not None and rate > most + _EPSILON:
        detail = f"shadow: {counts}: loss rate {rate:.2f} exceeds the allowed {most:.2f}"
        return GateCheck("shadow", False, detail)
    limit = f" within the allowed {most:.2f}" if most is not None else ""
    return GateCheck("shadow", True, f"shadow: {counts}: loss rate {rate:.2f}{limit}")


def decide(
    policy: GatePolicy,
    tenant: Comparison,
    guard: Comparison,
    candidate_latency: LatencySummary | None = None,
    live_latency: LatencySummary | None = None,
    judge: JudgeScores | None = None,
    shadow: ShadowSummary | None = None,
) -> GateDecision:
    """Whether to promote the candidate, with one check per rule of the policy (the judge's
    only when a minimum is set or a judge grade failed)."""
    checks = [
        check_tenant_ci(tenant, policy.confidence),
        check_tenant_improvement(tenant, policy.min_improvement),
        check_guard(guard, policy.max_guard_regression),
        check_latency(policy.max_latency_increase, candidate_latency, live_latency),
    ]
    if policy.min_judge_score is not None or (judge is not None and judge.errors):
        checks.append(check_judge(policy.min_judge_score, judge))
    if policy.min_shadow_pairs is not None or policy.max_shadow_loss_rate is not None:
        checks.append(check_shadow(policy, shadow))
    promote = all(check.passed for check in checks)
    reasons = [c.detail for c in checks if promote or not c.passed]
    return GateDecision(promote, reasons, checks)
