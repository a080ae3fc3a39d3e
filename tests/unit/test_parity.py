"""The parity comparison: what counts as peft and the engine agreeing on a greedy answer."""

from __future__ import annotations

import pytest

from training.parity import JUDGE_CHARS, PARITY_PROMPTS, agrees, common_prefix_chars, compare


def test_equal_and_prefix_answers_agree() -> None:
    assert agrees("ANSWER: Paris ##", "ANSWER: Paris ##")
    assert agrees("ANSWER: Paris", "ANSWER: Paris ##")  # one side stopped earlier
    assert agrees("  ANSWER: Paris ##\n", "ANSWER: Paris ##")  # whitespace is not judged


def test_late_divergence_agrees_but_early_divergence_does_not() -> None:
    head = "x" * JUDGE_CHARS
    assert agrees(head + " and then one way", head + " but another")
    assert not agrees(head[:-1] + "a tail", head[:-1] + "b tail")
    assert not agrees("ANSWER: Paris ##", "The capital of France is Paris.")
    assert not agrees("", "something")
    assert agrees("", "")


def test_compare_reports_each_prompt_and_the_verdict() -> None:
    n = len(PARITY_PROMPTS)
    peft = [f"ANSWER: {i} ##" for i in range(n)]
    engine = list(peft)
    engine[0] = "Something else entirely"
    report = compare(peft, engine, min_agreement=0.8)
    assert report.agreement == pytest.approx((n - 1) / n)
    assert report.passed is ((n - 1) / n >= 0.8)
    assert [row.match for row in report.per_prompt] == [False] + [True] * (n - 1)
    assert report.per_prompt[1].common_prefix_chars == len(peft[1])
    assert report.per_prompt[0].prompt == PARITY_PROMPTS[0]
    assert not compare(peft, engine, min_agreement=1.0).passed


def test_compare_refuses_mismatched_lengths_and_bad_threshold() -> None:
    answers = ["a"] * len(PARITY_PROMPTS)
    with pytest.raises(ValueError, match="one answer per prompt"):
        compare(answers, answers[:-1], 0.5)
    with pytest.raises(ValueError, match="min_agreement"):
        compare(answers, answers, 1.5)


def test_common_prefix_chars() -> None:
    assert common_prefix_chars("abcd", "abxd") == 2
    assert common_prefix_chars("", "abc") == 0


def test_answers_that_part_at_peft_s_own_near_tie_agree() -> None:
    # Measured on vLLM: peft "cat." vs the engine "Alec." for a rhyme, the first token a near-tie.
    assert agrees("cat.", "Alec.", tie_at=0)
    assert not agrees("cat.", "Alec.")
    # They must agree on everything before the tie; a divergence before it still counts.
    assert agrees("There are 60 minutes.", "There are 60 seconds.", tie_at=13)
    assert not agrees("There are 60 minutes.", "There were 60 minutes.", tie_at=13)


def test_compare_uses_the_near_tie_offsets_and_reports_them() -> None:
    n = len(PARITY_PROMPTS)
    peft = [f"ANSWER: {i} ##" for i in range(n)]
    engine = list(peft)
    engine[0], engine[1] = "ANSWER: seven", "Something else entirely"
    ties: list[int | None] = [None] * n
    ties[0] = len("ANSWER: ")  # peft's own pick after "ANSWER: " was a near-tie
    report = compare(peft, engine, min_agreement=0.8, ties=ties)
    assert [row.match for row in report.per_prompt] == [True, False] + [True] * (n - 2)
    assert report.per_prompt[0].peft_tie_at == len("ANSWER: ")
    assert report.per_prompt[1].peft_tie_at is None
    without = compare(peft, engine, min_agreement=0.8)  # results stored before ties existed
    assert [row.match for row in without.per_prompt][:2] == [False, False]
    with pytest.raises(ValueError, match="near-tie offset"):
        compare(peft, engine, 0.8, ties=ties[:-1])
