"""The checks a case can carry: msgspec structs tagged by `type` (the graders are evals.graders).

A suite line such as `{"type": "regex", "pattern": "Paris"}` decodes straight into `RegexCheck`
and a bad field is reported with its JSON path. Light on purpose: the gateway decodes policies
and suites with them; `check_schemas` checks a `json` check's schema against its JSON Schema
dialect (jsonschema, imported only when a schema is there to check).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

import msgspec

JsonSchema = dict[str, object]


class _CheckBase(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    needs_reference: ClassVar[bool] = False


class ExactCheck(_CheckBase, frozen=True, tag="exact"):
    """The answer equals the reference, character for character."""

    needs_reference: ClassVar[bool] = True


class NormalizedCheck(_CheckBase, frozen=True, tag="normalized"):
    """The answer equals the reference after NFKC, case folding, whitespace and punctuation."""

    needs_reference: ClassVar[bool] = True


class RegexCheck(_CheckBase, frozen=True, tag="regex"):
    """The pattern is found in the answer (or covers it, with `fullmatch`)."""

    pattern: str
    fullmatch: bool = False
    ignore_case: bool = False

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex {self.pattern!r}: {exc}") from None


class JsonCheck(_CheckBase, frozen=True, tag="json"):
    """The answer is JSON, and conforms to `schema` when one is given."""

    schema: JsonSchema | None = None


class RougeLCheck(_CheckBase, frozen=True, tag="rouge_l"):
    """ROUGE-L F-measure between the answer and the reference, as the score."""

    needs_reference: ClassVar[bool] = True


class LengthCheck(_CheckBase, frozen=True, tag="length"):
    """The answer's length in characters and/or words lies within the given bounds."""

    min_chars: int | None = None
    max_chars: int | None = None
    min_words: int | None = None
    max_words: int | None = None

    def __post_init__(self) -> None:
        bounds = (self.min_chars, self.max_chars, self.min_words, self.max_words)
        if all(bound is None for bound in bounds):
            raise ValueError("a length check needs at least one of min/max_chars/words")
        if any(bound is not None and bound < 0 for bound in bounds):
            raise ValueError("length bounds must be >= 0")
        for unit, low, high in (
            ("chars", self.min_chars, self.max_chars),
            ("words", self.min_words, self.max_words),
        ):
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{unit} ({low}) is greater than max_{unit} ({high})")


class JudgeCheck(_CheckBase, frozen=True, tag="judge"):
    """An LLM judge scores the answer against a rubric, from 0 to `scale`."""

    rubric: str
    scale: int = 10

    def __post_init__(self) -> None:
        if not self.rubric.strip():
            raise ValueError("a judge check needs a non-empty rubric")
        if self.scale < 1:
            raise ValueError(f"a judge check's scale must be >= 1, got {self.scale}")


Check = (
    ExactCheck | NormalizedCheck | RegexCheck | JsonCheck | RougeLCheck | LengthCheck | JudgeCheck
)


def check_schemas(checks: Iterable[Check]) -> None:
    """Every `json` check's schema is a valid JSON schema, else ValueError naming the problem."""
    from jsonschema import exceptions, validators

    for check in checks:
        if isinstance(check, JsonCheck) and check.schema is not None:
            try:
                validators.validator_for(check.schema).check_schema(check.schema)
            except exceptions.SchemaError as exc:
                raise ValueError(f"invalid JSON schema: {exc.message}") from None
