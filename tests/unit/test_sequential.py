"""Wald's SPRT (gateway.sequential) against hand computations and simulation."""

from __future__ import annotations

import math
import random

import pytest

from gateway.sequential import Sprt, fixed_sample_size


def test_the_llr_and_bounds_are_walds() -> None:
    test = Sprt(0.01, 0.05, alpha=0.05, beta=0.1)
    # by hand: ln(0.05/0.01) = 1.6094, ln(0.95/0.99) = -0.04124
    assert test.step_bad == pytest.approx(1.6094, abs=1e-4)
    assert test.step_good == pytest.approx(-0.04124, abs=1e-5)
    assert test.llr(100, 3) == pytest.approx(3 * 1.6094 + 97 * -0.04124, abs=1e-3)
    assert test.upper == pytest.approx(math.log(0.9 / 0.05))
    assert test.lower == pytest.approx(math.log(0.1 / 0.95))


def test_it_decides_each_way_and_waits_in_between() -> None:
    test = Sprt(0.01, 0.05)
    assert test.decide(2, 2) == "bad"  # two failures in two: 3.22 >= 2.89
    assert test.decide(2, 2, min_samples=5) == "undecided"  # not before the minimum
    assert test.fewest_to_accept_h0() == 55  # -2.2513 / -0.04124 = 54.6
    assert test.decide(54, 0) == "undecided"
    assert test.decide(55, 0) == "good"
    assert test.decide(200, 4) == "undecided"  # a rate between p0 and p1 needs more
    with pytest.raises(ValueError, match="p0 < p1"):
        Sprt(0.2, 0.1)


def test_it_needs_fewer_samples_than_a_fixed_size_test() -> None:
    # By hand: ((1.6449*sqrt(0.0099) + 1.2816*sqrt(0.0475)) / 0.04)^2 = 122.6
    assert fixed_sample_size(0.01, 0.05, 0.05, 0.1) == 123
    test = Sprt(0.01, 0.05)
    assert test.expected_samples(0.01) < 123 and test.expected_samples(0.05) < 123


@pytest.mark.parametrize(("true_rate", "expected"), [(0.01, "good"), (0.05, "bad")])
def test_simulated_error_rates_stay_within_alpha_and_beta(true_rate: float, expected: str) -> None:
    """Simulated runs: the wrong decision is rare (at most about alpha or beta) and the average
    run stops well before the fixed-size test's n."""
    rng, test, runs = random.Random(11), Sprt(0.01, 0.05), 400
    wrong, lengths = 0, []
    for _ in range(runs):
        n = bad = 0
        while (outcome := test.decide(n, bad, min_samples=1)) == "undecided":
            n, bad = n + 1, bad + (rng.random() < true_rate)
        wrong += outcome != expected
        lengths.append(n)
    assert wrong / runs <= 0.12
    assert sum(lengths) / runs < fixed_sample_size(0.01, 0.05, 0.05, 0.1)
