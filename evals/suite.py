"""Eval suites and their cases: loading (JSONL, a tenant's held-out split, the guard suite).

Grading a case is evals.runner's: a case's score is the **mean** of its checks' scores
(partial credit keeps the paired statistics sensitive; a case that must meet every check can
use threshold 1.0), and the case `passed` when that score is >= its threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import msgspec

from evals.checks import Check, NormalizedCheck, RougeLCheck
from training.chat import ChatMessage, Conversation, answer_of, prompt_of

DEFAULT_THRESHOLD = 0.5
DEFAULT_TENANT_CHECKS: tuple[Check, ...] = (NormalizedCheck(), RougeLCheck())
"""What a tenant's held-out split is graded with unless the tenant names its own checks."""

GUARD_SUITE = "guard"
_MAX_REPORTED_ERRORS = 20


class SuiteError(ValueError):
    """A suite cannot be loaded; the message lists every bad line (up to a limit)."""


class Case(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One prompt with what its answer is checked against."""

    messages: list[ChatMessage]
    checks: list[Check] = msgspec.field(default_factory=list)
    reference: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    id: str = ""

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("a case needs at least one message")
        if self.messages[-1]["role"] == "assistant":
            raise ValueError(
                "the last message is the assistant's: end with the user's turn and put the "
                "expected answer in 'reference'"
            )
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.reference is None:
            tags = {str(c.__struct_config__.tag) for c in self.checks if c.needs_reference}
            needing = sorted(tags)
            if needing:
                raise ValueError(f"checks {needing} need a 'reference' and the case has none")

    @property
    def question(self) -> str:
        """The prompt as plain text (for a judge): every message, one per paragraph."""
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in self.messages)


@dataclass(frozen=True)
class Suite:
    """A named list of cases with unique ids."""

    name: str
    cases: tuple[Case, ...]

    def __post_init__(self) -> None:
        if not self.cases:
            raise SuiteError(f"suite {self.name!r} has no cases")
        ids = [case.id for case in self.cases]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise SuiteError(f"suite {self.name!r} repeats case ids {duplicates}")
        unchecked = [case.id for case in self.cases if not case.checks]
        if unchecked:
            raise SuiteError(f"suite {self.name!r}: cases {unchecked[:5]} have no checks")


def _with_defaults(case: Case, fallback_id: str, default_checks: Sequence[Check]) -> Case:
    checks = case.checks or (list(default_checks) if case.reference is not None else [])
    if not checks:
        raise ValueError("a case needs 'checks', or a 'reference' to use the default checks")
    return msgspec.structs.replace(case, checks=checks, id=case.id or fallback_id)


def parse_jsonl(
    text: str, name: str, *, source: str = "<suite>", default_checks: Sequence[Check] = ()
) -> Suite:
    """A suite from JSONL text, one case per line; blank lines are skipped.

    Cases without `checks` get `default_checks` when they have a reference. Every bad line is
    reported as `source:line: problem`.
    """
    cases: list[Case] = []
    errors: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            case = msgspec.json.decode(line, type=Case)
            cases.append(_with_defaults(case, f"{name}-{number}", default_checks))
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            errors.append(f"{source}:{number}: {exc}")
    if errors:
        shown = "\n".join(errors[:_MAX_REPORTED_ERRORS])
        more = len(errors) - _MAX_REPORTED_ERRORS
        tail = f"\n… and {more} more" if more > 0 else ""
        raise SuiteError(f"{len(errors)} bad case(s) in {source}:\n{shown}{tail}")
    if not cases:
        raise SuiteError(f"{source} holds no cases")
    return Suite(name, tuple(cases))


def load_jsonl(path: Path, name: str | None = None, default_checks: Sequence[Check] = ()) -> Suite:
    """A suite from a JSONL file (named after the file unless `name` is given)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"cannot read suite file {path}: {exc}") from None
    return parse_jsonl(text, name or path.stem, source=str(path), default_checks=default_checks)


def from_conversations(
    name: str,
    conversations: Sequence[Conversation],
    checks: Sequence[Check] = DEFAULT_TENANT_CHECKS,
    threshold: float = DEFAULT_THRESHOLD,
) -> Suite:
    """A suite from a tenant's held-out conversations: the final assistant turn is the reference."""
    if not checks:
        raise SuiteError("a tenant suite needs at least one check")
    cases: list[Case] = []
    for index, conversation in enumerate(conversations):
        reference = answer_of(conversation)
        if not reference:
            raise SuiteError(
                f"conversation {index} of {name!r} does not end with an assistant answer"
            )
        try:
            case = Case(
                messages=prompt_of(conversation),
                checks=list(checks),
                reference=reference,
                threshold=threshold,
                id=f"{name}-{index}",
            )
        except ValueError as exc:
            raise SuiteError(f"conversation {index} of {name!r}: {exc}") from None
        cases.append(case)
    return Suite(name, tuple(cases))


def load_guard_suite() -> Suite:
    """The general-capability suite shipped with loopgate (catches catastrophic forgetting)."""
    text = resources.files("evals").joinpath("data", "guard.jsonl").read_text(encoding="utf-8")
    return parse_jsonl(text, GUARD_SUITE, source="evals/data/guard.jsonl")
