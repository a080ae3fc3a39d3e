"""The pure part of a rollout's decisions: from a stage's evidence to advance, hold or roll back.

Shadow: one sequential test on the share of decisive pairs (wins + losses) the candidate loses.
Canary step: a sequential test on the error rate (required to advance) and on the negative
feedback rate (rolls back when it turns; required to advance only with `require_feedback`),
the shadow's loss share since the step began (rolls back only), and a bound on the p50 and p95
latency ratios. Any test that says "worse" rolls back at once; the step advances when every
required test says "acceptable" and the latency is within its bounds. Hold details are stable
strings, so a controller records a hold once, not at every tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.rollout_evidence import CanaryReading
from gateway.rollout_policy import (
    CanaryPolicy,
    Evidence,
    LatencyEvidence,
    RolloutPolicy,
    SignalEvidence,
)
from store.records import ShadowSummary

MAX_P1 = 0.99


@dataclass(frozen=True)
class Verdict:
    action: Literal["advance", "hold", "rollback"]
    detail: str
    evidence: Evidence


def sprt_signal(
    policy: RolloutPolicy,
    name: str,
    counts: tuple[int, int],
    rates: tuple[float, float],
    min_samples: int,
    *,
    required: bool,
) -> SignalEvidence:
    """One signal's SPRT on (n observations, bad ones) between rates (p0, p1)."""
    (n, bad), (p0, p1) = counts, rates
    test = policy.sprt(p0, p1)
    outcome = test.decide(n, bad, min_samples)
    return SignalEvidence(name, n, bad, p0, p1, round(test.llr(n, bad), 4), outcome, required)


def shadow_losses(summary: ShadowSummary, base: ShadowSummary | None) -> tuple[int, int, int]:
    """(graded, decisive, lost) pairs since `base` (None: since the shadow began)."""
    graded = summary.graded - (base.graded if base else 0)
    wins = summary.wins - (base.wins if base else 0)
    losses = summary.losses - (base.losses if base else 0)
    return graded, wins + losses, losses


def shadow_signal(
    policy: RolloutPolicy, summary: ShadowSummary, base: ShadowSummary | None, *, required: bool
) -> SignalEvidence:
    graded, decisive, lost = shadow_losses(summary, base)
    p = policy.shadow
    # Until min_pairs are graded nothing is decided (ties count toward it, not toward the test).
    minimum = decisive + 1 if graded < p.min_pairs else 1
    rates = (p.loss_p0, p.loss_p1)
    return sprt_signal(policy, "shadow_loss", (decisive, lost), rates, minimum, required=required)


def shadow_verdict(policy: RolloutPolicy, summary: ShadowSummary) -> Verdict:
    signal = shadow_signal(policy, summary, None, required=True)
    evidence = Evidence(signals=[signal], shadow=summary)
    if signal.outcome == "bad":
        detail = f"the candidate lost {signal.bad} of {signal.n} decisive shadow pairs: worse"
        return Verdict("rollback", detail, evidence)
    if signal.outcome == "good":
        detail = f"the candidate lost {signal.bad} of {signal.n} decisive shadow pairs: not worse"
        return Verdict("advance", detail, evidence)
    if summary.graded >= policy.shadow.max_pairs:  # truncated: the sign of the evidence decides
        won = signal.n - signal.bad
        detail = (
            f"{summary.graded} graded shadow pairs without a decision (max_pairs): "
            f"the candidate lost {signal.bad} and won {won} of them"
        )
        if signal.bad > won:
            return Verdict("rollback", f"{detail}: worse", evidence)
        return Verdict("advance", f"{detail}: not worse", evidence)
    return Verdict("hold", "waiting for graded shadow pairs", evidence)


def error_signal(policy: RolloutPolicy, reading: CanaryReading) -> SignalEvidence:
    c = policy.canary
    counts = (reading.canary.requests, reading.canary.errors)
    return sprt_signal(
        policy, "error_rate", counts, (c.error_p0, c.error_p1), c.min_requests, required=True
    )


def feedback_signal(policy: RolloutPolicy, reading: CanaryReading) -> SignalEvidence:
    """H0 at the live arm's negative rate (or the floor), H1 a margin above it."""
    c, live = policy.canary, reading.live
    sampled = live.feedback_sample >= c.min_feedback
    live_rate = live.negative_feedback / live.feedback_sample if sampled else 0.0
    p0 = min(max(c.feedback_floor, live_rate), MAX_P1 - 0.01)
    p1 = min(p0 + c.feedback_margin, MAX_P1)
    counts = (reading.canary.feedback_sample, reading.canary.negative_feedback)
    return sprt_signal(
        policy, "negative_feedback", counts, (p0, p1), c.min_feedback, required=c.require_feedback
    )


def _ratio(canary: float | None, live: float | None, slack: float) -> float | None:
    if canary is None or live is None:
        return None
    return round((canary + slack) / (live + slack), 4)


def latency_check(c: CanaryPolicy, reading: CanaryReading) -> tuple[LatencyEvidence, str | None]:
    """The latency evidence and, when enough was measured, why it is too slow (None: fine);
    `latency_slack_ms` on both sides keeps millisecond noise from looking like a ratio."""
    arm, live = reading.canary, reading.live
    samples = min(arm.latency_samples, live.latency_samples)
    c50, l50 = arm.p50_latency_ms, live.p50_latency_ms
    c95, l95 = arm.p95_latency_ms, live.p95_latency_ms
    p50 = _ratio(c50, l50, c.latency_slack_ms)
    p95 = _ratio(c95, l95, c.latency_slack_ms)
    evidence = LatencyEvidence(c50, l50, c95, l95, p50, p95, samples)
    if samples < c.min_requests:
        return evidence, None
    if p50 is not None and p50 > c.max_p50_ratio:
        return evidence, f"latency p50 ratio {p50:.2f} > {c.max_p50_ratio:.2f}"
    if p95 is not None and p95 > c.max_p95_ratio:
        return evidence, f"latency p95 ratio {p95:.2f} > {c.max_p95_ratio:.2f}"
    return evidence, None


def canary_verdict(
    policy: RolloutPolicy, reading: CanaryReading, shadow: SignalEvidence | None
) -> Verdict:
    signals = [error_signal(policy, reading), feedback_signal(policy, reading)]
    signals += [shadow] if shadow is not None else []
    latency, too_slow = latency_check(policy.canary, reading)
    evidence = Evidence(signals=signals, latency=latency)
    bad = [s for s in signals if s.outcome == "bad"]
    if bad:
        named = ", ".join(f"{s.name} {s.bad}/{s.n}" for s in bad)
        return Verdict("rollback", f"the sequential test turned: {named} is worse", evidence)
    if too_slow is not None:
        return Verdict("rollback", too_slow, evidence)
    measured = latency.samples >= policy.canary.min_requests
    if measured and all(s.outcome == "good" for s in signals if s.required):
        named = ", ".join(f"{s.name} {s.bad}/{s.n}" for s in signals if s.required)
        return Verdict("advance", f"the sequential test accepts: {named}", evidence)
    return Verdict("hold", "waiting for canary evidence", evidence)
