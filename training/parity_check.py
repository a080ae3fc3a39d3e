"""The parity check's pure half: the fixed prompts, and the judgement of peft's answers against
the engine's (the agreement rule is explained in `training.parity`). No model code: the gateway,
which asks the engine, imports this; the worker computes peft's side (`training.parity`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from training.chat import Conversation

JUDGE_CHARS = 24
PARITY_PROMPTS: tuple[Conversation, ...] = (
    [{"role": "user", "content": "What is the capital of Italy?"}],
    [{"role": "user", "content": "Name a fruit that is yellow."}],
    [{"role": "user", "content": "How many minutes are in an hour?"}],
    [{"role": "user", "content": "Give me one word that rhymes with cat."}],
    [{"role": "user", "content": "What do bees make?"}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Why is the sea salty?"},
    ],
)


@dataclass(frozen=True)
class PromptParity:
    """One prompt's two answers and whether they agree."""

    prompt: Conversation
    peft: str
    engine: str
    match: bool
    common_prefix_chars: int
    peft_tie_at: int | None = None


@dataclass(frozen=True)
class ParityReport:
    """The share of prompts whose answers agree, per prompt detail, and the verdict."""

    agreement: float
    per_prompt: list[PromptParity]
    passed: bool


def common_prefix_chars(a: str, b: str) -> int:
    """How many leading characters two strings share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def agrees(
    expected: str, actual: str, judge_chars: int = JUDGE_CHARS, tie_at: int | None = None
) -> bool:
    """Equal, one a prefix of the other, the same first `judge_chars` characters, or the same
    characters up to `expected`'s first near-tie (`tie_at`)."""
    a, b = expected.strip(), actual.strip()
    if a == b:
        return True
    if tie_at is not None and common_prefix_chars(a, b) >= tie_at:
        return True
    if not a or not b:
        return False
    return a.startswith(b) or b.startswith(a) or common_prefix_chars(a, b) >= judge_chars


def compare(
    expected: Sequence[str],
    actual: Sequence[str],
    min_agreement: float,
    prompts: Sequence[Conversation] = PARITY_PROMPTS,
    judge_chars: int = JUDGE_CHARS,
    ties: Sequence[int | None] | None = None,
) -> ParityReport:
    """Judge peft answers (`expected`, with their near-tie offsets `ties` when known) against the
    engine's (`actual`), prompt by prompt."""
    if len(expected) != len(actual) or len(expected) != len(prompts):
        raise ValueError(
            f"need one answer per prompt: {len(prompts)} prompts, {len(expected)} peft answers, "
            f"{len(actual)} engine answers"
        )
    if ties is None:
        ties = [None] * len(expected)
    elif len(ties) != len(expected):
        raise ValueError(f"need one near-tie offset per answer: {len(ties)} for {len(expected)}")
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be in [0, 1]; got {min_agreement}")
    rows = [
        PromptParity(
            prompt=list(prompt),
            peft=peft,
            engine=engine,
            match=agrees(peft, engine, judge_chars, tie_at),
            common_prefix_chars=common_prefix_chars(peft.strip(), engine.strip()),
            peft_tie_at=tie_at,
        )
        for prompt, peft, engine, tie_at in zip(prompts, expected, actual, ties, strict=True)
    ]
    agreement = sum(row.match for row in rows) / len(rows) if rows else 1.0
    return ParityReport(agreement, rows, agreement >= min_agreement)
