"""Wald's sequential probability ratio test (SPRT) on a binary signal, in pure Python.

The promotion controller (gateway.rollout) watches rates such as "this canary request failed"
or "the candidate lost this shadow pair". For each it tests

    H0: p = p0  (acceptable: advance)   against   H1: p = p1 > p0  (worse: roll back)

after every new observation, instead of waiting for a sample size fixed in advance:

1. With n observations of which k were "bad", the log-likelihood ratio of H1 to H0 is
   LLR = k*ln(p1/p0) + (n-k)*ln((1-p1)/(1-p0)); every bad one adds a positive step, every good
   one a negative step.
2. Wald's bounds: accept H1 once LLR >= ln((1-beta)/alpha), accept H0 once
   LLR <= ln(beta/(1-alpha)), else keep watching. alpha is the chance of rolling back a
   candidate whose rate really is p0, beta the chance of advancing one whose rate really is p1
   (approximately: Wald's bounds are conservative, the true errors are at most about
   alpha/(1-beta) and beta/(1-alpha)).
3. On average it needs far fewer observations than the fixed-size one-sided test with the same
   alpha and beta (`fixed_sample_size`), and it stops at once when the evidence is lopsided: a
   candidate failing every request is rolled back after a handful of them.

`min_samples` keeps a decision from resting on the first few observations only.
The gateway process may not import scipy or numpy: the normal quantile is the standard
library's (`statistics.NormalDist`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

Outcome = Literal["good", "bad", "undecided"]


@dataclass(frozen=True)
class Sprt:
    """One signal's test: H0 p=p0 against H1 p=p1, with error rates alpha and beta."""

    p0: float
    p1: float
    alpha: float = 0.05
    beta: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.p0 < self.p1 < 1.0:
            raise ValueError(f"need 0 < p0 < p1 < 1, got p0={self.p0!r} p1={self.p1!r}")
        for name, value in (("alpha", self.alpha), ("beta", self.beta)):
            if not 0.0 < value < 0.5:
                raise ValueError(f"{name} must be in (0, 0.5), got {value!r}")

    @property
    def step_bad(self) -> float:
        """What one bad observation adds to the LLR (> 0)."""
        return math.log(self.p1 / self.p0)

    @property
    def step_good(self) -> float:
        """What one good observation adds to the LLR (< 0)."""
        return math.log((1.0 - self.p1) / (1.0 - self.p0))

    @property
    def upper(self) -> float:
        """Accept H1 (roll back) at or above this LLR."""
        return math.log((1.0 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        """Accept H0 (advance) at or below this LLR."""
        return math.log(self.beta / (1.0 - self.alpha))

    def llr(self, n: int, k: int) -> float:
        if not 0 <= k <= n:
            raise ValueError(f"need 0 <= k <= n, got n={n} k={k}")
        return k * self.step_bad + (n - k) * self.step_good

    def decide(self, n: int, k: int, min_samples: int = 1) -> Outcome:
        """The test's verdict after n observations with k bad ones."""
        if n < min_samples:
            return "undecided"
        value = self.llr(n, k)
        if value >= self.upper:
            return "bad"
        if value <= self.lower:
            return "good"
        return "undecided"

    def fewest_to_accept_h0(self) -> int:
        """Observations (all good) that the test needs at least before it can advance."""
        return math.ceil(self.lower / self.step_good)

    def expected_samples(self, p: float) -> float:
        """Wald's approximate average sample number when the true rate is p0 or p1."""
        if p == self.p0:
            accept_h0 = 1.0 - self.alpha
        elif p == self.p1:
            accept_h0 = self.beta
        else:
            raise ValueError("the approximation is given here for p0 and p1 only")
        drift = p * self.step_bad + (1.0 - p) * self.step_good
        return (accept_h0 * self.lower + (1.0 - accept_h0) * self.upper) / drift


def fixed_sample_size(p0: float, p1: float, alpha: float, beta: float) -> int:
    """The n a one-sided fixed-size test of p0 against p1 needs for the same alpha and beta
    (normal approximation to the binomial):
    n = ((z(1-alpha)*sqrt(p0*(1-p0)) + z(1-beta)*sqrt(p1*(1-p1))) / (p1-p0))^2."""
    z = NormalDist().inv_cdf
    spread = z(1.0 - alpha) * math.sqrt(p0 * (1.0 - p0)) + z(1.0 - beta) * math.sqrt(
        p1 * (1.0 - p1)
    )
    return math.ceil((spread / (p1 - p0)) ** 2)
