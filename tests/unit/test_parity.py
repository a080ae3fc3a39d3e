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
