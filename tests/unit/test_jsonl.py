"""Validation of uploaded chat JSONL files: good files parse, every bad line is named."""

from __future__ import annotations

import json

import pytest

from training.jsonl import MAX_REPORTED_ERRORS, JsonlError, LineError, validate_chat_jsonl

GOOD = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris.", "weight": 1},
    ]
}
MULTI_TURN = {
    "messages": [
        {"role": "user", "content": "Hi", "name": "ann"},
        {"role": "assistant", "content": "Hello!", "weight": 0},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
}


def jsonl(*lines: object) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def errors_of(data: bytes, *, max_lines: int = 100, max_line_bytes: int = 10_000) -> JsonlError:
    with pytest.raises(JsonlError) as caught:
        validate_chat_jsonl(data, max_lines=max_lines, max_line_bytes=max_line_bytes)
    return caught.value


def test_a_good_file_parses() -> None:
    data = b"\xef\xbb\xbf" + jsonl(GOOD, b"", MULTI_TURN).replace(b"\n", b"\r\n")
    conversations = validate_chat_jsonl(data, max_lines=10, max_line_bytes=1000)
    assert conversations == [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ],
    ]


def user_then(*messages: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": "q"}, *messages]}


ANSWER = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe garbage", "not valid UTF-8"),
        (b"[1, 2]", "expected a JSON object, got a list"),
        ({"prompt": "q", "completion": "a"}, 'missing "messages"'),
        ({"messages": "hello"}, '"messages" must be a list, got a string'),
        ({"messages": []}, '"messages" is empty'),
        (user_then("hi"), "message 2: expected an object, got a string"),
        (user_then({"content": "a"}), 'message 2: "role" must be a string, got null'),
        (user_then({"role": "robot", "content": "a"}), 'unknown role "robot"'),
        (user_then({"role": "tool", "content": "42"}), 'needs its "tool_call_id"'),
        (user_then({"role": "function", "content": "42"}), 'role "function" is not supported'),
        (
            user_then({"role": "assistant", "content": None, "tool_calls": []}),
            '"tool_calls" is empty',
        ),
        (
            user_then({"role": "assistant", "content": 3}),
            '"content" must be a string, got a number',
        ),
        (
            user_then({"role": "assistant", "content": [{"type": "text", "text": "a"}]}),
            "content parts are not supported",
        ),
        ({"messages": [{"role": "user", "content": "q"}]}, "last message must be the assistant"),
        ({"messages": [{"role": "system", "content": "s"}, ANSWER]}, "no user message"),
        (user_then({"role": "assistant", "content": "  "}), "final assistant message is empty"),
        (
            {**user_then(ANSWER), "tools": [{"type": "function"}]},
            '"tools" must be a list of function',
        ),
    ],
)
def test_each_kind_of_bad_line_is_reported_with_its_number(bad: object, message: str) -> None:
    error = errors_of(jsonl(GOOD, GOOD, bad, GOOD))
    [found] = error.errors
    assert found.line == 3
    assert message in found.message
    assert f"line 3: {found.message}" in str(error)


def test_several_bad_lines_are_all_reported() -> None:
    data = jsonl(GOOD, b"oops", GOOD, b"", {"messages": 1}, GOOD, user_then({"role": "x"}))
    error = errors_of(data)
    assert [e.line for e in error.errors] == [2, 5, 7]  # blank line 4 still counts
    assert error.omitted == 0


def test_the_list_of_bad_lines_is_capped() -> None:
    error = errors_of(jsonl(*([b"nope"] * (MAX_REPORTED_ERRORS + 7))))
    assert len(error.errors) == MAX_REPORTED_ERRORS
    assert error.errors[-1] == LineError(MAX_REPORTED_ERRORS, error.errors[-1].message)
    assert error.omitted == 7
    assert "and 7 more bad lines" in str(error)


@pytest.mark.parametrize("data", [b"", b"\n  \n\r\n"])
def test_an_empty_file_is_an_error(data: bytes) -> None:
    [found] = errors_of(data).errors
    assert "the file is empty" in found.message


def test_size_limits_name_the_line() -> None:
    long_line = {"messages": [{"role": "user", "content": "x" * 500}, ANSWER]}
    [too_long] = errors_of(jsonl(GOOD, long_line), max_line_bytes=300).errors
    assert too_long.line == 2
    assert "the limit is 300" in too_long.message

    [too_many] = errors_of(jsonl(GOOD, GOOD, GOOD), max_lines=2).errors
    assert too_many.line == 3
    assert "more than 2 examples" in too_many.message
