"""A circuit breaker per replica: stop sending to a replica that keeps failing, probe it later.

    CLOSED ──(`threshold` failures in a row)──▶ OPEN ──(`cooldown_s` passed)──▶ HALF_OPEN
       ▲                                         ▲                                 │
       └──────────(the probe succeeds)───────────┼────────(the probe fails)────────┘

While OPEN the replica gets no requests; in HALF_OPEN exactly one request (the probe) is let
through at a time. A failure is what the replica is to blame for: no connection, a broken or
timed-out answer, a 5xx. A 4xx is the client's doing and counts as a success.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("loopgate.breaker")


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    name: str = "replica"
    threshold: int = 3
    cooldown_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    on_change: Callable[[BreakerState], None] = field(default=lambda _: None)

    def admits(self) -> bool:
        """May a new request be sent now? (Moves OPEN to HALF_OPEN once the cooldown is over.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.clock() - self.opened_at < self.cooldown_s:
                return False
            self._move(BreakerState.HALF_OPEN)
        return not self.probing

    def attempt(self) -> None:
        """A request is being sent; in HALF_OPEN it is the probe."""
        if self.state is BreakerState.HALF_OPEN:
            self.probing = True

    def abandoned(self) -> None:
        """The request ended with no verdict on the replica (the client went away): a probe
        that never finished must not keep the circuit half-open with nobody let through."""
        self.probing = False

    def succeeded(self) -> None:
        self.failures = 0
        self.probing = False
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    def failed(self) -> None:
        self.failures += 1
        self.probing = False
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.failures >= self.threshold
        ):
            self.opened_at = self.clock()
            self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        level = logging.WARNING if state is BreakerState.OPEN else logging.INFO
        log.log(level, "replica %s: circuit %s → %s", self.name, self.state.value, state.value)
        self.state = state
        self.on_change(state)
