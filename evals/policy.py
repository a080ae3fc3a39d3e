"""A tenant's promotion policy as stored: the gate's limits and the tenant suite's checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from evals.checks import Check


@dataclass(frozen=True)
class GatePolicy:
    """What a tenant requires of a candidate adapter before it replaces the live one."""

    min_improvement: float = field(
        default=0.05,
        metadata={"help": "Least mean gain on the tenant suite (absolute score, 0-1) to promote."},
    )
    max_guard_regression: float = field(
        default=0.02,
        metadata={"help": "Largest allowed drop of the guard suite mean (absolute score, 0-1)."},
    )
    max_latency_increase: float | None = field(
        default=None,
        metadata={
            "help": "Largest allowed p50 latency increase as a ratio (0.2 = +20%); None: off."
        },
    )
    confidence: float = field(
        default=0.95,
        metadata={"help": "Confidence level of the interval on the tenant suite improvement."},
    )
    min_judge_score: float | None = field(
        default=None,
        metadata={
            "help": "Least mean LLM-judge score (0-1) of the candidate on the tenant suite's "
            "judge checks; None: off."
        },
    )
    min_shadow_pairs: int | None = field(
        default=None,
        metadata={
            "help": "Least graded shadow pairs (the candidate's answers to mirrored live "
            "traffic beside the live ones, gateway.shadow) to promote; None: off."
        },
    )
    max_shadow_loss_rate: float | None = field(
        default=None,
        metadata={"help": "Largest share (0-1) of graded shadow pairs it may lose; None: off."},
    )

    def __post_init__(self) -> None:
        for name in ("min_improvement", "max_guard_regression"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"GatePolicy.{name} must be between 0 and 1, got {value}")
        limit = self.max_latency_increase
        if limit is not None and not (math.isfinite(limit) and limit >= 0.0):
            raise ValueError(f"GatePolicy.max_latency_increase must be >= 0 or None, got {limit}")
        judge = self.min_judge_score
        if judge is not None and not (math.isfinite(judge) and 0.0 <= judge <= 1.0):
            raise ValueError(f"GatePolicy.min_judge_score must be between 0 and 1, got {judge}")
        pairs, losses = self.min_shadow_pairs, self.max_shadow_loss_rate
        if pairs is not None and pairs < 1:
            raise ValueError(f"GatePolicy.min_shadow_pairs must be >= 1 or None, got {pairs}")
        if losses is not None and not (math.isfinite(losses) and 0.0 <= losses <= 1.0):
            raise ValueError(f"GatePolicy.max_shadow_loss_rate must be in [0, 1], got {losses}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(
                f"GatePolicy.confidence must be between 0 and 1 (exclusive), got {self.confidence}"
            )


Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class PolicyIn(msgspec.Struct, forbid_unknown_fields=True):
    """A tenant's promotion gate and how its held-out split is graded."""

    min_improvement: Fraction = 0.05
    max_guard_regression: Fraction = 0.02
    max_latency_increase: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    confidence: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.95
    tenant_checks: list[Check] = msgspec.field(default_factory=list)
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=2048)] = 96
    min_judge_score: Fraction | None = None
    min_shadow_pairs: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    max_shadow_loss_rate: Fraction | None = None

    def gate(self) -> GatePolicy:
        return GatePolicy(
            self.min_improvement,
            self.max_guard_regression,
            self.max_latency_increase,
            self.confidence,
            self.min_judge_score,
            min_shadow_pairs=self.min_shadow_pairs,
            max_shadow_loss_rate=self.max_shadow_loss_rate,
        )
