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

    def __post_init__(self) -> None:
        for name in ("min_improvement", "max_guard_regression"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"GatePolicy.{name} must be between 0 and 1, got {value}")
        limit = self.max_latency_increase
        if limit is not None and not (math.isfinite(limit) and limit >= 0.0):
            raise ValueError(f"GatePolicy.max_latency_increase must be >= 0 or None, got {limit}")
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

    def gate(self) -> GatePolicy:
        return GatePolicy(
            self.min_improvement,
            self.max_guard_regression,
            self.max_latency_increase,
            self.confidence,
        )
