"""The circuit breaker's transitions, on a clock the test moves."""

from __future__ import annotations

from replicas.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> tuple[CircuitBreaker, list[BreakerState]]:
    seen: list[BreakerState] = []
    return CircuitBreaker(
        "r0", threshold=3, cooldown_s=10, clock=clock, on_change=seen.append
    ), seen


def test_opens_after_threshold_failures_in_a_row_only() -> None:
    b, seen = breaker(Clock())
    b.failed()
    b.failed()
    b.succeeded()  # a success in between resets the count
    b.failed()
    b.failed()
    assert b.state is BreakerState.CLOSED and b.admits()
    b.failed()
    assert b.state is BreakerState.OPEN and not b.admits()
    assert seen == [BreakerState.OPEN]


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    clock = Clock()
    b, seen = breaker(clock)
    for _ in range(3):
        b.failed()
    clock.now += 9.9
    assert not b.admits()
    clock.now += 0.2
    assert b.admits() and b.state is BreakerState.HALF_OPEN
    b.attempt()  # the probe is on its way: nobody else gets through
    assert not b.admits()
    b.succeeded()
    assert b.state is BreakerState.CLOSED and b.admits() and b.failures == 0
    assert seen == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_a_failed_probe_opens_again_for_another_cooldown() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    for _ in range(3):
        b.failed()
    clock.now += 10
    assert b.admits()
    b.attempt()
    b.failed()  # one failure is enough in half-open
    assert b.state is BreakerState.OPEN and not b.admits()
    clock.now += 10
    assert b.admits() and b.state is BreakerState.HALF_OPEN


def test_attempts_while_closed_are_not_probes() -> None:
    b, _ = breaker(Clock())
    b.attempt()
    b.attempt()
    assert b.admits() and not b.probing


def test_an_abandoned_probe_lets_the_next_one_through() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    for _ in range(3):
        b.failed()
    clock.now += 10
    assert b.admits()
    b.attempt()
    assert not b.admits()
    b.abandoned()  # the client went away before the replica answered
    assert b.admits() and b.state is BreakerState.HALF_OPEN
