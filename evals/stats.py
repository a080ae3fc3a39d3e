"""Paired statistics for comparing two systems on the same cases, and latency summaries.

Convention: a `Comparison` is always *candidate minus reference* (live or base), so a positive
delta means the candidate scored higher. Confidence intervals come from a seeded paired
bootstrap (scipy.stats.bootstrap, BCa; percentile when BCa is undefined) so a report can be
reproduced exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats as scipy_stats

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 9999
DEFAULT_SEED = 0
TIE_TOLERANCE = 1e-9

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Interval:
    """A confidence interval at `level` (e.g. 0.95)."""

    low: float
    high: float
    level: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Comparison:
    """Candidate vs a reference system on the same cases (deltas = candidate - reference)."""

    candidate_mean: float
    reference_mean: float
    deltas: tuple[float, ...]
    mean_delta: float
    ci: Interval
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return len(self.deltas)


@dataclass(frozen=True)
class ScoreSummary:
    """One system's mean score on a suite with a bootstrap interval (for error bars)."""

    mean: float
    ci: Interval
    n: int


@dataclass(frozen=True)
class LatencySummary:
    """Median and 95th percentile of request latencies, in the unit they were given."""

    p50: float
    p95: float
    n: int


def _as_scores(values: Sequence[float] | FloatArray, what: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} must be a non-empty list of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return array


def _check_level(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")


def _mean(sample: FloatArray, axis: int = -1) -> FloatArray:
    return np.asarray(np.mean(sample, axis=axis), dtype=np.float64)


def mean_interval(
    values: Sequence[float] | FloatArray,
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Bootstrap interval of the mean of `values`.

    Resampling per-case deltas is the paired bootstrap of a mean difference. One value, or
    values all equal, have no spread to resample: the interval is that single point.
    """
    _check_level(confidence)
    sample = _as_scores(values, "values")
    if sample.size == 1 or np.ptp(sample) == 0.0:
        point = float(sample[0])
        return Interval(point, point, confidence)
    low, high = math.nan, math.nan
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            # BCa warns and returns NaN on degenerate resamples; percentile is then used.
            warnings.simplefilter("ignore")
            result = scipy_stats.bootstrap(
                (sample,),
                _mean,
                n_resamples=n_resamples,
                confidence_level=confidence,
                method=method,
                rng=np.random.default_rng(seed),
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            break
    return Interval(low, high, confidence)


def compare_paired(
    candidate: Sequence[float],
    reference: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Compare per-case scores of two systems on the same cases, in the same order."""
    cand = _as_scores(candidate, "candidate scores")
    ref = _as_scores(reference, "reference scores")
    if cand.shape != ref.shape:
        raise ValueError(
            f"paired comparison needs one score per case from each system: "
            f"got {cand.size} candidate and {ref.size} reference scores"
        )
    deltas = cand - ref
    return Comparison(
        candidate_mean=float(cand.mean()),
        reference_mean=float(ref.mean()),
        deltas=tuple(float(d) for d in deltas),
        mean_delta=float(deltas.mean()),
        ci=mean_interval(deltas, confidence, n_resamples=n_resamples, seed=seed),
        wins=int(np.sum(deltas > TIE_TOLERANCE)),
        ties=int(np.sum(np.abs(deltas) <= TIE_TOLERANCE)),
        losses=int(np.sum(deltas < -TIE_TOLERANCE)),
    )


def summarize_scores(
    scores: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> ScoreSummary:
    """One system's mean score with its bootstrap interval."""
    sample = _as_scores(scores, "scores")
    interval = mean_interval(sample, confidence, n_resamples=n_resamples, seed=seed)
    return ScoreSummary(float(sample.mean()), interval, int(sample.size))


def summarize_latency(latencies: Sequence[float]) -> LatencySummary:
    """p50 and p95 (linear interpolation) of a list of latencies."""
    sample = _as_scores(latencies, "latencies")
    if np.any(sample < 0):
        raise ValueError("latencies must be >= 0")
    p50, p95 = np.percentile(sample, [50, 95])
    return LatencySummary(float(p50), float(p95), int(sample.size))
