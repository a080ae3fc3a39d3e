"""A run's judge scores per system, and the judge's calibration against the reference checks.

Runs in the evals worker only (scipy). A case is *labeled* when it carries a judge check and at
least one deterministic check (exact, normalized, regex, json, rouge_l, length: computed from
the reference or the answer alone). On every graded answer of a labeled case (every system's),
two verdicts are compared, each with the case's own threshold:

    judge pass     = mean of its judge checks' scores         >= threshold
    reference pass = mean of its deterministic checks' scores >= threshold

The report: the share of answers where they agree, Cohen's kappa (agreement beyond what the
two pass rates give by chance: (p_o - p_e) / (1 - p_e), p_e = p_j p_r + (1 - p_j)(1 - p_r)),
the 2x2 confusion counts, and Spearman's rank correlation of the two scores. Answers whose
judge grade failed are left out (they are counted as errors in the judge scores).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from scipy.stats.contingency import crosstab

from evals.checks import JudgeCheck
from evals.graders import Grade
from evals.judging import Calibration, Confusion, JudgeScores, JudgeSummary
from evals.runner import Answer
from evals.suite import Case, Suite

SYSTEM_ORDER = ("candidate", "live", "base")


@dataclass(frozen=True)
class Labeled:
    """One answer's judge and reference scores, and the threshold both are read against."""

    judge: float
    reference: float
    threshold: float

    @property
    def judge_pass(self) -> bool:
        return self.judge >= self.threshold

    @property
    def reference_pass(self) -> bool:
        return self.reference >= self.threshold


def split(case: Case, grades: Sequence[Grade]) -> tuple[list[Grade], list[Grade]]:
    """A case's grades as (judge grades, deterministic grades), in check order."""
    judged = [g for c, g in zip(case.checks, grades, strict=True) if isinstance(c, JudgeCheck)]
    other = [g for c, g in zip(case.checks, grades, strict=True) if not isinstance(c, JudgeCheck)]
    return judged, other


def judge_summary(answers: Sequence[Answer], suite: Suite) -> JudgeSummary | None:
    """The suite's judge scores per system and the calibration; None without judge checks."""
    cases = {case.id: case for case in suite.cases}
    mine = [a for a in answers if a.suite == suite.name]
    judged = [(a, *split(cases[a.case_id], a.result.grades)) for a in mine]
    if not any(j for _, j, _ in judged):
        return None
    systems = [s for s in SYSTEM_ORDER if any(a.system == s for a in mine)]
    scores = {s: scores_of([g for a, j, _ in judged if a.system == s for g in j]) for s in systems}
    labeled = [
        Labeled(_mean(j), _mean(o), cases[a.case_id].threshold)
        for a, j, o in judged
        if j and o and not any(g.error for g in j)
    ]
    return JudgeSummary(scores, calibrate(labeled))


def scores_of(grades: Sequence[Grade]) -> JudgeScores:
    had = [g.score for g in grades if not g.error]
    failed = [g.reason for g in grades if g.error]
    mean = sum(had) / len(had) if had else None
    return JudgeScores(mean, len(had), len(failed), failed[0] if failed else None)


def calibrate(labeled: Sequence[Labeled]) -> Calibration | None:
    """Agreement, Cohen's kappa, confusion counts and Spearman's rho; None for no answers."""
    if not labeled:
        return None
    judge = np.array([x.judge_pass for x in labeled])
    reference = np.array([x.reference_pass for x in labeled])
    # Rows: judge pass / fail; columns: reference pass / fail.
    table = crosstab(judge, reference, levels=([True, False], [True, False])).count
    confusion = Confusion(
        both_pass=int(table[0, 0]),
        judge_only=int(table[0, 1]),
        reference_only=int(table[1, 0]),
        both_fail=int(table[1, 1]),
    )
    n = len(labeled)
    agreement = (confusion.both_pass + confusion.both_fail) / n
    return Calibration(n, agreement, kappa(table), confusion, _spearman(labeled))


def kappa(table: NDArray[np.int64]) -> float | None:
    """Cohen's kappa of a 2x2 table of counts; None when chance agreement is already total."""
    n = float(table.sum())
    observed = float(np.trace(table)) / n
    rows, cols = table.sum(axis=1) / n, table.sum(axis=0) / n
    chance = float(np.dot(rows, cols))
    if math.isclose(chance, 1.0):
        return None
    return (observed - chance) / (1.0 - chance)


def _spearman(labeled: Sequence[Labeled]) -> float | None:
    if len(labeled) < 2:
        return None
    with warnings.catch_warnings():  # a constant input warns and gives NaN: undefined
        warnings.simplefilter("ignore")
        rho = stats.spearmanr([x.judge for x in labeled], [x.reference for x in labeled])[0]
    rho = float(rho)
    return None if math.isnan(rho) else rho


def _mean(grades: Sequence[Grade]) -> float:
    return sum(g.score for g in grades) / len(grades)
