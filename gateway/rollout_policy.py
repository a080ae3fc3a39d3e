"""A rollout's policy (its stages and their evidence thresholds), its stored state, its decisions
and the evidence each decision rests on: the typed JSON of a `store.RolloutRecord`.

Stages, in order: `offline` (the promotion gate's verdict on an eval run) → `shadow` (a share of
live traffic mirrored to the candidate, pairs graded) → `canary` (a percent of users on the
candidate, one step after another) → `full` (promoted through the Swapper) → `done`.
Every threshold has a default; `check` refuses a policy that makes no sense with a 400 that
names the field.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

import msgspec

from gateway.canary import Thresholds
from gateway.sequential import Outcome, Sprt
from store.errors import InvalidRequest
from store.records import ShadowSummary

Stage = Literal["offline", "shadow", "canary", "full", "done"]
Action = Literal["start", "advance", "hold", "rollback", "promote", "abort"]
Rate = Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)]
Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


def loose_backstop() -> Thresholds:
    """The canary monitor's own thresholds under a rollout: only gross failures (the sequential
    test decides everything else, and sooner)."""
    return Thresholds(
        max_error_rate=0.5, max_negative_feedback_rate=0.8, max_latency_ratio=10.0, min_requests=20
    )


class ShadowPolicy(msgspec.Struct, forbid_unknown_fields=True):
    """Shadow stage: advance once the candidate is shown not worse on graded live pairs."""

    enabled: bool = True
    share: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.1  # of the alias's requests
    min_pairs: Count = 20  # graded pairs before any decision
    # Graded pairs at which a still-undecided test ends (e.g. mostly ties: the checks cannot
    # tell the two apart): it advances when the candidate lost no more pairs than it won.
    max_pairs: Count = 100
    # The share of decisive pairs (wins + losses; a candidate error is a loss) it loses:
    loss_p0: Rate = 0.4  # ...when it is as good as live or better (H0: advance)
    loss_p1: Rate = 0.6  # ...when it is worse (H1: roll back)
    keep_during_canary: bool = True  # keep grading pairs; a turn there rolls the canary back


class CanaryPolicy(msgspec.Struct, forbid_unknown_fields=True):
    """Canary stage: each percent step advances as soon as its own evidence suffices."""

    steps: list[Annotated[float, msgspec.Meta(gt=0.0, lt=100.0)]] = msgspec.field(
        default_factory=lambda: [5.0, 25.0, 50.0]
    )
    min_requests: Count = 20  # canary requests per step before any decision
    error_p0: Rate = 0.01  # an acceptable error rate (H0)
    error_p1: Rate = 0.05  # an error rate that rolls back (H1)
    # Negative feedback: H0 at max(floor, the live arm's rate), H1 that plus the margin.
    feedback_floor: Rate = 0.05
    feedback_margin: Rate = 0.15
    min_feedback: Count = 20  # canary completions sampled before the feedback test counts
    require_feedback: bool = False  # advancing waits for the feedback test too
    max_p50_ratio: Annotated[float, msgspec.Meta(ge=1.0)] = 1.5
    max_p95_ratio: Annotated[float, msgspec.Meta(ge=1.0)] = 2.0
    latency_slack_ms: Annotated[float, msgspec.Meta(ge=0.0)] = 50.0  # added to both arms
    backstop: Thresholds = msgspec.field(default_factory=loose_backstop)


class RolloutPolicy(msgspec.Struct, forbid_unknown_fields=True):
    alpha: Annotated[float, msgspec.Meta(gt=0.0, lt=0.5)] = 0.05  # P(roll back a good one)
    beta: Annotated[float, msgspec.Meta(gt=0.0, lt=0.5)] = 0.1  # P(advance a bad one)
    shadow: ShadowPolicy = msgspec.field(default_factory=ShadowPolicy)
    canary: CanaryPolicy = msgspec.field(default_factory=CanaryPolicy)

    def check(self) -> RolloutPolicy:
        """The policy itself, or a 400 naming the field that makes no sense."""
        pairs = (
            ("shadow.loss_p0", self.shadow.loss_p0, self.shadow.loss_p1),
            ("canary.error_p0", self.canary.error_p0, self.canary.error_p1),
        )
        for name, p0, p1 in pairs:
            if not p0 < p1:
                raise InvalidRequest(f"{name} must be below its p1 ({p0} >= {p1})", param=name)
        if self.shadow.max_pairs < self.shadow.min_pairs:
            raise InvalidRequest(
                f"shadow.max_pairs must be at least shadow.min_pairs "
                f"({self.shadow.max_pairs} < {self.shadow.min_pairs})",
                param="policy.shadow.max_pairs",
            )
        steps = self.canary.steps
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise InvalidRequest(
                f"canary.steps must increase strictly, got {steps}", param="policy.canary.steps"
            )
        return self

    def sprt(self, p0: float, p1: float) -> Sprt:
        return Sprt(p0, p1, self.alpha, self.beta)


class SignalEvidence(msgspec.Struct):
    """One binary signal's sequential test: n observations, `bad` of them, and the verdict."""

    name: str
    n: int
    bad: int
    p0: float
    p1: float
    llr: float
    outcome: Outcome
    required: bool  # advancing waits for its "good"; a "bad" always rolls back


class LatencyEvidence(msgspec.Struct):
    canary_p50_ms: float | None
    live_p50_ms: float | None
    canary_p95_ms: float | None
    live_p95_ms: float | None
    p50_ratio: float | None
    p95_ratio: float | None
    samples: int


class Evidence(msgspec.Struct, omit_defaults=True):
    """What one decision rested on (kept in the decision log and the alias history)."""

    eval_id: str | None = None
    percent: float | None = None
    canary_id: str | None = None
    shadow_id: str | None = None
    signals: list[SignalEvidence] = msgspec.field(default_factory=list)
    latency: LatencyEvidence | None = None
    shadow: ShadowSummary | None = None


class Decision(msgspec.Struct, omit_defaults=True):
    at: float
    stage: Stage
    action: Action
    detail: str
    evidence: Evidence | None = None


class RolloutState(msgspec.Struct):
    """Where a rollout stands (the record's `state`); saved after every decision."""

    stage: Stage = "offline"
    step: int = 0  # the canary step (an index into policy.canary.steps)
    eval_id: str | None = None
    shadow_id: str | None = None
    canary_id: str | None = None
    shadow_base: ShadowSummary | None = None  # the shadow's counts when this canary step began
    held: str | None = None  # the last hold recorded (the same hold is not recorded again)
    decisions: list[Decision] = msgspec.field(default_factory=list)


class StartRollout(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /admin/tenants/{t}/aliases/{a}/rollouts`."""

    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    policy: RolloutPolicy | None = None
    eval_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


class Abort(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


class RolloutView(msgspec.Struct):
    """A rollout as the admin API shows it."""

    id: str
    alias: str
    version: str
    status: str
    stage: Stage
    percent: float | None  # the canary's share of users now (None outside the canary stage)
    policy: RolloutPolicy
    eval_id: str | None
    shadow_id: str | None
    canary_id: str | None
    decisions: list[Decision]
    actor: str
    created_at: float
    updated_at: float
    finished_at: float | None
    owner: str | None
