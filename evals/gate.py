"""The promotion gate: a tenant's policy and the pure decision whether a candidate goes live.

A candidate is promoted only when every check passes:
1. tenant_ci: the lower bound of the CI of (candidate - live) on the tenant suite is > 0,
   on at least 2 paired cases (so a candidate equal within noise is refused);
2. tenant_improvement: the mean improvement is >= `min_improvement` (absolute score);
3. guard_regression: the guard suite mean drops by at most `max_guard_regression` against its
   reference (base or live);
4. latency: candidate p50 <= live p50 * (1 + `max_latency_increase`), when a limit is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evals.policy import GatePolicy

__all__ = ["GateCheck", "GateDecision", "GatePolicy", "decide"]

if TYPE_CHECKING:  # the statistics (scipy) run in the evals worker; a policy is light
    from evals.stats import Comparison, Interval, LatencySummary

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


def decide(
    policy: GatePolicy,
    tenant: Comparison,
    guard: Comparison,
    candidate_latency: LatencySummary | None = None,
    live_latency: LatencySummary | None = None,
) -> GateDecision:
    """Whether to promote the candidate, with one check per rule of the policy."""
    checks = [
        check_tenant_ci(tenant, policy.confidence),
        check_tenant_improvement(tenant, policy.min_improvement),
        check_guard(guard, policy.max_guard_regression),
        check_latency(policy.max_latency_increase, candidate_latency, live_latency),
    ]
    promote = all(check.passed for check in checks)
    reasons = [c.detail for c in checks if promote or not c.passed]
    return GateDecision(promote, reasons, checks)
