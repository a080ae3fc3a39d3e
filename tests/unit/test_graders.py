"""Graders on known answers, case scoring, and suite loading (JSONL, tenant split, guard)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from evals.graders import (
    Check,
    ExactCheck,
    GraderError,
    JsonCheck,
    JudgeCheck,
    LengthCheck,
    NormalizedCheck,
    RegexCheck,
    RougeLCheck,
    check_schemas,
    grade,
    grade_async,
    normalize,
)
from evals.runner import grade_case
from evals.suite import (
    DEFAULT_TENANT_CHECKS,
    Case,
    SuiteError,
    from_conversations,
    load_guard_suite,
    load_jsonl,
    parse_jsonl,
)
from training.chat import Conversation

PERSON: dict[str, object] = {
    "type": "object",
    "required": ["name", "age"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
}


def test_exact_is_character_for_character() -> None:
    assert grade(ExactCheck(), "Paris", "Paris").score == 1.0
    miss = grade(ExactCheck(), "Paris ", "Paris")
    assert miss.score == 0.0
    assert "'Paris'" in miss.reason


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("  PARIS. ", "paris"),
        (
            "\uff30\uff41\uff52\uff49\uff53\uff01",
            "Paris",
        ),  # full-width letters and punctuation (NFKC)
        ("STRASSE", "straße"),  # case folding, not just lower()
        ("New\n  York!!", "new york"),
        ("ﬁne", "fine"),  # ligature
        ("I love it 🎉", "i love it 🎉"),
    ],
)
def test_normalized_match_accepts_unicode_variants(answer: str, reference: str) -> None:
    assert grade(NormalizedCheck(), answer, reference).score == 1.0


def test_normalized_match_keeps_what_matters() -> None:
    assert grade(NormalizedCheck(), "I love it 🎉", "I love it 🎊").score == 0.0
    assert grade(NormalizedCheck(), "Paris, France", "Paris France").score == 0.0
    assert grade(NormalizedCheck(), "", "Paris").score == 0.0
    assert normalize("¿Qué?!") == "¿qué"


def test_regex_search_fullmatch_and_case() -> None:
    check = RegexCheck(pattern=r"\bParis\b")
    assert grade(check, "It is Paris.", None).score == 1.0
    assert grade(check, "It is paris.", None).score == 0.0
    assert grade(RegexCheck(pattern=r"\bParis\b", ignore_case=True), "paris", None).score == 1.0
    full = RegexCheck(pattern=r"\d+", fullmatch=True)
    assert grade(full, " 42\n", None).score == 1.0
    assert grade(full, "42 apples", None).score == 0.0
    assert grade(check, "", None).score == 0.0


def test_json_validity_fence_and_malformed() -> None:
    assert grade(JsonCheck(), '{"a": 1}', None).score == 1.0
    fenced = grade(JsonCheck(), 'Here:\n```json\n{"a": 1}\n```\nDone.', None)
    assert fenced.score == 1.0
    assert "fence" in fenced.reason
    broken = grade(JsonCheck(), '{"a": 1,}', None)
    assert broken.score == 0.0
    assert "not JSON" in broken.reason
    assert grade(JsonCheck(), "```json\n{oops}\n```", None).score == 0.0
    assert grade(JsonCheck(), "", None).reason == "empty answer"


def test_json_schema_conformance_and_violation() -> None:
    check = JsonCheck(schema=PERSON)
    assert grade(check, '{"name": "Zoë", "age": 3}', None).score == 1.0
    wrong_type = grade(check, '{"name": "Zoë", "age": "three"}', None)
    assert wrong_type.score == 0.0
    assert "$['age']" in wrong_type.reason
    missing = grade(check, '{"name": "Zoë"}', None)
    assert missing.score == 0.0
    assert "'age' is a required property" in missing.reason


def test_invalid_schema_is_rejected_before_grading() -> None:
    """Decoding stays light; the schemas are checked when a policy or suite is sent."""
    bad = JsonCheck(schema={"type": "no-such-type"})
    with pytest.raises(ValueError, match="invalid JSON schema"):
        check_schemas([RougeLCheck(), bad])
    check_schemas([JsonCheck(schema={"type": "object"}), RougeLCheck()])


def test_rouge_l_identical_disjoint_partial_and_unicode() -> None:
    assert grade(RougeLCheck(), "the cat sat on the mat", "the cat sat on the mat").score == 1.0
    assert grade(RougeLCheck(), "dogs bark loudly", "the cat sat").score == 0.0
    partial = grade(RougeLCheck(), "the cat sat", "the cat sat on the mat").score
    # LCS 3 words: precision 3/3, recall 3/6, F = 2/3.
    assert partial == pytest.approx(2 / 3)
    assert grade(RougeLCheck(), "東京 は 首都", "東京 は 首都").score == 1.0
    assert grade(RougeLCheck(), "   ", "the cat").reason == "no words in the answer"


def test_length_limits_in_chars_and_words() -> None:
    check = LengthCheck(min_words=2, max_words=3, max_chars=20)
    assert grade(check, "two words", None).score == 1.0
    too_long = grade(check, "one two three four", None)
    assert too_long.score == 0.0
    assert "4 words > max 3" in too_long.reason
    assert "1 words < min 2" in grade(check, "one", None).reason
    assert grade(LengthCheck(min_chars=1), "", None).score == 0.0
    with pytest.raises(ValueError, match="at least one"):
        LengthCheck()
    with pytest.raises(ValueError, match="greater than"):
        LengthCheck(min_chars=5, max_chars=2)


def test_reference_checks_need_a_reference() -> None:
    with pytest.raises(GraderError, match="reference"):
        grade(RougeLCheck(), "x", None)


class FakeJudge:
    """An OpenAI-compatible judge stand-in: returns a canned reply and records prompts."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.prompts: list[str] = []

    async def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.reply


async def test_judge_scores_from_the_last_score_line() -> None:
    judge = FakeJudge("Accurate but terse. Score: 3 ... on reflection, Score: 8")
    check = JudgeCheck(rubric="Is the answer polite?")
    result = await grade_async(check, "user: hi", "Hello!", "Hi there", judge)
    assert result.score == pytest.approx(0.8)
    assert "8/10" in result.reason
    assert "Is the answer polite?" in judge.prompts[0]
    assert "Hello!" in judge.prompts[0]
    assert "Hi there" in judge.prompts[0]


async def test_judge_unreadable_or_out_of_scale_scores_zero() -> None:
    check = JudgeCheck(rubric="r", scale=5)
    unreadable = await grade_async(check, "q", "a", None, FakeJudge("I like it"))
    assert unreadable.score == 0.0
    assert "no 'Score: N'" in unreadable.reason
    too_high = await grade_async(check, "q", "a", None, FakeJudge("Score: 9"))
    assert too_high.score == 0.0
    assert "above" in too_high.reason


async def test_judge_check_without_a_judge_is_a_clear_error() -> None:
    with pytest.raises(GraderError, match="no judge model is configured"):
        await grade_async(JudgeCheck(rubric="r"), "q", "a", None, None)


def _case(checks: list[Check], reference: str | None = "Paris", threshold: float = 0.5) -> Case:
    messages: Conversation = [{"role": "user", "content": "Capital of France?"}]
    return Case(messages=messages, checks=checks, reference=reference, threshold=threshold, id="c")


async def test_case_score_is_the_mean_and_passed_uses_the_threshold() -> None:
    case = _case([RegexCheck(pattern="Paris"), LengthCheck(max_words=2)])
    result = await grade_case(case, "It is Paris, of course.")
    assert [g.score for g in result.grades] == [1.0, 0.0]
    assert result.score == 0.5
    assert result.passed
    strict = _case([RegexCheck(pattern="Paris"), LengthCheck(max_words=2)], threshold=1.0)
    assert not (await grade_case(strict, "It is Paris, of course.")).passed


def test_case_rejects_reference_checks_without_reference() -> None:
    with pytest.raises(ValueError, match=r"\['exact'\] need a 'reference'"):
        _case([ExactCheck()], reference=None)


def test_jsonl_suite_loads_and_applies_default_checks() -> None:
    text = (
        '{"id": "a", "messages": [{"role": "user", "content": "2+2?"}],'
        ' "checks": [{"type": "regex", "pattern": "4"}]}\n'
        "\n"
        '{"messages": [{"role": "user", "content": "Say hi"}], "reference": "hi"}\n'
    )
    suite = parse_jsonl(text, "mini", default_checks=DEFAULT_TENANT_CHECKS)
    assert [case.id for case in suite.cases] == ["a", "mini-3"]
    assert suite.cases[1].checks == list(DEFAULT_TENANT_CHECKS)


def test_jsonl_errors_name_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "q"}],'
        ' "checks": [{"type": "regex", "pattern": "a("}]}\n'
        '{"messages": [{"role": "robot", "content": "q"}], "checks": [{"type": "json"}]}\n'
        '{"messages": [{"role": "user", "content": "q"}], "checks": [{"type": "bleu"}]}\n'
        "not json\n"
        '{"messages": [{"role": "user", "content": "q"}]}\n'
        '{"messages": [{"role": "user", "content": "ok"}], "checks": [{"type": "json"}]}\n',
        encoding="utf-8",
    )
    with pytest.raises(SuiteError) as info:
        load_jsonl(path)
    message = str(info.value)
    assert message.startswith("5 bad case(s)")
    assert f"{path}:1: invalid regex 'a('" in message
    assert "missing ), unterminated subpattern" in message
    assert f"{path}:2:" in message
    assert "robot" in message
    assert f"{path}:3:" in message
    assert "bleu" in message
    assert f"{path}:4: JSON is malformed" in message
    assert f"{path}:5: a case needs 'checks'" in message
    assert ":6:" not in message


def test_jsonl_rejects_duplicate_ids_and_empty_files(tmp_path: Path) -> None:
    line = (
        '{"id": "x", "messages": [{"role": "user", "content": "q"}], "checks": [{"type": "json"}]}'
    )
    with pytest.raises(SuiteError, match=r"repeats case ids \['x'\]"):
        parse_jsonl(f"{line}\n{line}\n", "dup")
    with pytest.raises(SuiteError, match="holds no cases"):
        parse_jsonl("\n\n", "empty")
    with pytest.raises(SuiteError, match="cannot read suite file"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_jsonl_case_ending_with_the_assistant_is_explained() -> None:
    line = (
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],'
        ' "checks": [{"type": "json"}]}'
    )
    with pytest.raises(SuiteError, match="put the expected answer in 'reference'"):
        parse_jsonl(line, "s")


def test_tenant_split_uses_the_final_assistant_turn_as_reference() -> None:
    conversations: list[Conversation] = [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Order status?"},
            {"role": "assistant", "content": '{"status": "shipped"}'},
        ]
    ]
    suite = from_conversations("acme", conversations)
    case = suite.cases[0]
    assert case.reference == '{"status": "shipped"}'
    assert [m["role"] for m in case.messages] == ["system", "user"]
    assert case.checks == list(DEFAULT_TENANT_CHECKS)
    custom = from_conversations("acme", conversations, checks=[JsonCheck()])
    assert custom.cases[0].checks == [JsonCheck()]


def test_tenant_split_rejects_conversations_without_an_answer() -> None:
    with pytest.raises(SuiteError, match="conversation 1 of 'acme' does not end"):
        from_conversations(
            "acme",
            [
                [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                [{"role": "user", "content": "unanswered"}],
            ],
        )


def test_checks_round_trip_through_json() -> None:
    checks: list[Check] = [RegexCheck(pattern="x", fullmatch=True), JsonCheck(schema=PERSON)]
    encoded = msgspec.json.encode(checks)
    assert b'"type":"regex"' in encoded
    assert msgspec.json.decode(encoded, type=list[Check]) == checks


async def test_guard_suite_loads_and_every_case_is_gradable() -> None:
    suite = load_guard_suite()
    assert suite.name == "guard"
    # Enough cases that the default allowed drop (0.02) is two whole cases, not a fraction of one.
    assert len(suite.cases) >= 100
    assert all(case.checks for case in suite.cases)
    capital = next(case for case in suite.cases if case.id == "capital-paris")
    assert (await grade_case(capital, "The capital of France is Paris.")).passed
    assert not (await grade_case(capital, "The capital of France is Lyon.")).passed
    for case in suite.cases:
        assert not (await grade_case(case, "")).passed, case.id
