"""Checks a case can carry and the graders that score one answer against them.

Every grader returns a `Grade`: a score in [0, 1] and a short reason a person can read.
Check specs are msgspec structs tagged by `type`, so a suite line such as
`{"type": "regex", "pattern": "Paris"}` decodes straight into `RegexCheck` and a bad field is
reported with its JSON path.

Decisions:
- `exact` compares the strings as they are (no stripping); use `normalized` for leniency.
- `normalized` applies Unicode NFKC, case folding, whitespace collapsing and strips trailing
  punctuation (any Unicode punctuation), so full-width "Paris!" matches "paris".
- `regex` searches anywhere by default; with `fullmatch` the pattern must cover the answer
  with its surrounding whitespace stripped (models often end with a newline).
- `json` parses the whole answer; if that fails and the answer holds a fenced block
  (```json ... ``` or ``` ... ```), the first fenced block is parsed instead, because chat
  models wrap JSON that way. The reason says when the fence was used.
- `rouge_l` is the ROUGE-L F-measure (no stemming) over Unicode word tokens after NFKC and
  case folding, so non-Latin text is scored too (rouge-score's own tokenizer drops it).
- `judge` asks an injected async callable and reads `Score: N` (N out of `scale`) from its
  last such line; an unreadable or out-of-range reply scores 0 with the reply in the reason. A
  judge that fails (`JudgeError`: timeout, refusals, retries spent; evals.judging) grades the
  check as an error: score 0, `error` set, the reason saying why; the run goes on.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import cache
from typing import TYPE_CHECKING

import msgspec

from evals.checks import (
    Check,
    ExactCheck,
    JsonCheck,
    JudgeCheck,
    LengthCheck,
    NormalizedCheck,
    RegexCheck,
    RougeLCheck,
    check_schemas,
)
from evals.judging import Judge, JudgeError

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

__all__ = [
    "Check",
    "ExactCheck",
    "Grade",
    "GraderError",
    "JsonCheck",
    "Judge",
    "JudgeCheck",
    "JudgeError",
    "LengthCheck",
    "NormalizedCheck",
    "RegexCheck",
    "RougeLCheck",
    "check_schemas",
    "grade",
    "grade_async",
]


class GraderError(Exception):
    """A check cannot be graded as configured (e.g. a judge check without a judge)."""


class Grade(msgspec.Struct, frozen=True):
    """One check's verdict on one answer; `error`: no verdict could be had (scored 0)."""

    score: float
    reason: str
    error: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"a grade's score must be in [0, 1], got {self.score}")


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, trailing punctuation removed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    collapsed = " ".join(folded.split())
    end = len(collapsed)
    while end and unicodedata.category(collapsed[end - 1]).startswith("P"):
        end -= 1
    return collapsed[:end].rstrip()


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def grade_exact(answer: str, reference: str) -> Grade:
    if answer == reference:
        return Grade(1.0, "exact match")
    return Grade(0.0, f"expected {_shorten(reference)!r}, got {_shorten(answer)!r}")


def grade_normalized(answer: str, reference: str) -> Grade:
    if normalize(answer) == normalize(reference):
        return Grade(1.0, "normalised match")
    return Grade(
        0.0, f"normalised {_shorten(normalize(answer))!r} != {_shorten(normalize(reference))!r}"
    )


def grade_regex(check: RegexCheck, answer: str) -> Grade:
    flags = re.IGNORECASE if check.ignore_case else 0
    pattern = re.compile(check.pattern, flags)
    if check.fullmatch:
        found = pattern.fullmatch(answer.strip()) is not None
        how = "covers the answer"
    else:
        found = pattern.search(answer) is not None
        how = "found"
    if found:
        return Grade(1.0, f"/{_shorten(check.pattern)}/ {how}")
    return Grade(0.0, f"/{_shorten(check.pattern)}/ not {how} in {_shorten(answer)!r}")


_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_json(answer: str) -> tuple[object, bool]:
    """The JSON value in the answer and whether it came from a fenced block.

    Raises ValueError (with the parser's message) when there is no JSON to find.
    """
    try:
        return json.loads(answer), False
    except json.JSONDecodeError as whole_error:
        fenced = _FENCE.search(answer)
        if fenced is None:
            raise ValueError(f"not JSON: {whole_error}") from None
        try:
            return json.loads(fenced.group(1)), True
        except json.JSONDecodeError as fence_error:
            raise ValueError(f"fenced block is not JSON: {fence_error}") from None


def grade_json(check: JsonCheck, answer: str) -> Grade:
    if not answer.strip():
        return Grade(0.0, "empty answer")
    try:
        value, fenced = extract_json(answer)
    except ValueError as exc:
        return Grade(0.0, str(exc))
    where = " (from a ``` fence)" if fenced else ""
    if check.schema is None:
        return Grade(1.0, f"valid JSON{where}")
    from jsonschema import exceptions, validators

    validator = validators.validator_for(check.schema)(check.schema)
    error = exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return Grade(1.0, f"JSON conforms to the schema{where}")
    path = "$" + "".join(f"[{part!r}]" for part in error.absolute_path)
    return Grade(0.0, f"schema violation at {path}: {_shorten(error.message, 120)}")


class _UnicodeWords:
    """A rouge-score tokenizer that keeps non-Latin words."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold())


@cache
def _rouge() -> RougeScorer:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_UnicodeWords())


def grade_rouge_l(answer: str, reference: str) -> Grade:
    if not _UnicodeWords().tokenize(answer):
        return Grade(0.0, "no words in the answer")
    fmeasure = float(_rouge().score(reference, answer)["rougeL"].fmeasure)
    return Grade(min(1.0, max(0.0, fmeasure)), f"ROUGE-L F = {fmeasure:.3f}")


def grade_length(check: LengthCheck, answer: str) -> Grade:
    chars, words = len(answer), len(answer.split())
    problems = [
        f"{value} {unit} < min {low}"
        for value, unit, low in (
            (chars, "chars", check.min_chars),
            (words, "words", check.min_words),
        )
        if low is not None and value < low
    ] + [
        f"{value} {unit} > max {high}"
        for value, unit, high in (
            (chars, "chars", check.max_chars),
            (words, "words", check.max_words),
        )
        if high is not None and value > high
    ]
    if problems:
        return Grade(0.0, "; ".join(problems))
    return Grade(1.0, f"{chars} chars, {words} words: within limits")


def judge_prompt(check: JudgeCheck, question: str, answer: str, reference: str | None) -> str:
    """The text sent to the judge model."""
    parts = [
        "You are grading an assistant's answer.",
        f"Rubric:\n{check.rubric}",
        f"Question:\n{question}",
    ]
    if reference is not None:
        parts.append(f"Reference answer:\n{reference}")
    parts += [
        f"Answer to grade:\n{answer}",
        f"Give a whole-number score from 0 to {check.scale}. "
        f"End your reply with a line of the form 'Score: N'.",
    ]
    return "\n\n".join(parts)


_SCORE = re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_judge_score(check: JudgeCheck, reply: str) -> Grade:
    """The judge reply's last `Score: N`, scaled to [0, 1]."""
    found = _SCORE.findall(reply)
    if not found:
        return Grade(0.0, f"judge reply has no 'Score: N': {_shorten(reply)!r}")
    raw = float(found[-1])
    if raw > check.scale:
        return Grade(0.0, f"judge score {raw:g} is above the scale's {check.scale}")
    return Grade(raw / check.scale, f"judge scored {raw:g}/{check.scale}")


async def grade_judge(
    check: JudgeCheck, question: str, answer: str, reference: str | None, judge: Judge | None
) -> Grade:
    if judge is None:
        raise GraderError(
            "this case has a 'judge' check but no judge model is configured: "
            "configure an LLM judge for evals or remove the check from the suite"
        )
    try:
        reply = await judge(judge_prompt(check, question, answer, reference))
    except JudgeError as exc:
        return Grade(0.0, f"judge error: {exc}", error=True)
    return parse_judge_score(check, reply)


def grade(check: Check, answer: str, reference: str | None) -> Grade:
    """Score one answer with one deterministic check (everything but `judge`)."""
    match check:
        case RegexCheck():
            return grade_regex(check, answer)
        case JsonCheck():
            return grade_json(check, answer)
        case LengthCheck():
            return grade_length(check, answer)
        case JudgeCheck():
            raise GraderError("judge checks are asynchronous: use grade_async")
    if reference is None:
        raise GraderError(f"a {type(check).__name__} needs the case's reference answer")
    match check:
        case ExactCheck():
            return grade_exact(answer, reference)
        case NormalizedCheck():
            return grade_normalized(answer, reference)
        case RougeLCheck():
            return grade_rouge_l(answer, reference)
    raise GraderError(f"unknown check {check!r}")


async def grade_async(
    check: Check, question: str, answer: str, reference: str | None, judge: Judge | None = None
) -> Grade:
    """Score one answer with any check; `judge` is only called for judge checks."""
    if isinstance(check, JudgeCheck):
        return await grade_judge(check, question, answer, reference, judge)
    return grade(check, answer, reference)
