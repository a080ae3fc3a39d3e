"""Grading shadow pairs (gateway.shadow): the live and the candidate answer to one request,
each scored with the shadow's checks; the candidate wins, loses or ties.

An answer's score is the mean of its checks' grades (evals.graders, as a suite case's is).
Live traffic has no reference answer, so the checks are reference-free: regex, json, length,
and judge checks, which ask the tenant's LLM judge through the `JudgeFor` hook (None: the
tenant has no judge, and a pair needing one is `ungradable`; so is one whose judge failed).
A candidate that failed to answer loses. Runs in the evals worker, a batch per pass.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from evals.checks import Check, JudgeCheck
from evals.graders import Grade, GraderError, Judge, grade_async
from store import Shadow, ShadowPair, ShadowVerdict, Store

log = logging.getLogger("loopgate.evals.shadow")

BATCH = 32  # pairs graded per pass
TIE_MARGIN = 1e-9  # scores are means of floats: equal answers must tie

JudgeFor = Callable[[str], Awaitable[Judge | None]]
"""The judge hook: a tenant id to its LLM judge, or None when the tenant has none."""


async def no_judge(tenant_id: str) -> Judge | None:
    del tenant_id
    return None


class _Message(msgspec.Struct):
    role: str = "user"
    content: str | list[object] | None = None


class _Asked(msgspec.Struct):
    """What a judge is shown of a captured request: its messages, or its prompt."""

    messages: list[_Message] | None = None
    prompt: object = None


def question_of(request_json: str | None) -> str:
    """A captured request as plain text for a judge: one paragraph per message."""
    if not request_json:
        return ""
    try:
        asked = msgspec.json.decode(request_json, type=_Asked)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    if asked.messages is None:
        return asked.prompt if isinstance(asked.prompt, str) else ""
    return "\n\n".join(f"{m.role}: {_text(m.content)}" for m in asked.messages)


def _text(content: str | list[object] | None) -> str:
    if isinstance(content, str) or content is None:
        return content or ""
    return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))


def verdict_of(live: float, candidate: float | None) -> ShadowVerdict:
    if candidate is None or candidate < live - TIE_MARGIN:
        return "loss"
    return "win" if candidate > live + TIE_MARGIN else "tie"


async def score(
    checks: Sequence[Check], question: str, answer: str, judge: Judge | None
) -> tuple[float, list[Grade]]:
    """The mean of the checks' grades of one answer, and the grades."""
    grades = [await grade_async(c, question, answer, None, judge) for c in checks]
    return sum(g.score for g in grades) / len(grades), grades


class ShadowGrader:
    """Grades the store's ungraded pairs, oldest first, each once."""

    def __init__(self, store: Store, judge_for: JudgeFor = no_judge, batch: int = BATCH):
        self.store = store
        self.judge_for = judge_for
        self.batch = batch
        self._judges: dict[str, Judge | None] = {}  # this pass's, per tenant

    async def grade_pending(self) -> int:
        """One pass; how many pairs it graded (0: nothing waits)."""
        pairs = await self.store.ungraded_shadow_pairs(self.batch)
        self._judges = {}
        shadows: dict[str, Shadow | None] = {}
        graded = 0
        for pair in pairs:
            if pair.shadow_id not in shadows:
                shadows[pair.shadow_id] = await self.store.get_shadow(pair.shadow_id)
            shadow = shadows[pair.shadow_id]
            checks = msgspec.json.decode(shadow.checks, type=list[Check]) if shadow else []
            graded += await self.grade(pair, checks)
        return graded

    async def grade(self, pair: ShadowPair, checks: Sequence[Check]) -> bool:
        """Grade one pair and store its verdict (False: another worker graded it first)."""
        try:
            verdict, live, candidate, reasons = await self._judged(pair, checks)
        except GraderError as exc:
            verdict, live, candidate, reasons = "ungradable", None, None, str(exc)
        except Exception as exc:  # e.g. an invalid JSON schema: the pair, not the worker, fails
            log.exception("grading shadow pair %s failed", pair.id)
            verdict, live, candidate, reasons = "ungradable", None, None, repr(exc)[:500]
        return await self.store.grade_shadow_pair(pair.id, verdict, live, candidate, reasons)

    async def _judged(
        self, pair: ShadowPair, checks: Sequence[Check]
    ) -> tuple[ShadowVerdict, float | None, float | None, str]:
        if not checks:
            raise GraderError(f"shadow {pair.shadow_id} has no checks")
        judge, question = None, ""
        if any(isinstance(c, JudgeCheck) for c in checks):
            if pair.tenant_id not in self._judges:
                self._judges[pair.tenant_id] = await self.judge_for(pair.tenant_id)
            judge = self._judges[pair.tenant_id]
            completion = await self.store.get_completion(pair.tenant_id, pair.live_completion_id)
            question = question_of(completion.request if completion else None)
        live, live_grades = await score(checks, question, pair.live_answer, judge)
        if pair.candidate_answer is None:
            why = f"the candidate failed: {pair.candidate_error or 'no answer'}"
            return "loss", live, 0.0, why
        candidate, grades = await score(checks, question, pair.candidate_answer, judge)
        if any(g.error for g in (*live_grades, *grades)):
            failed = next(g for g in (*live_grades, *grades) if g.error)
            return "ungradable", None, None, failed.reason
        pairs = zip(live_grades, grades, strict=True)
        reasons = "; ".join(f"live: {a.reason} | candidate: {b.reason}" for a, b in pairs)
        return verdict_of(live, candidate), live, candidate, reasons[:2000]
