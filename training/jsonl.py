"""Validation of uploaded training files in OpenAI's chat fine-tuning JSONL format.

One JSON object per line: `{"messages": [{"role": ..., "content": ...}, ...]}` with roles
`system`, `user` and `assistant`, string contents, at least one user message, and an assistant
message last (the answer that is learned). An optional `weight` on assistant messages and a
`name` on any message are accepted and ignored. Tool calls, `tool`/`function` messages and
content parts are not supported. Blank lines are skipped. Every line is checked and every bad
line is reported (up to `MAX_REPORTED_ERRORS`), each with its 1-based line number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec

from training.chat import ROLES, ChatMessage, Conversation

MAX_REPORTED_ERRORS = 50
_TOOL_ROLES = frozenset({"tool", "function"})
_TOOL_KEYS = ("tool_calls", "function_call", "tool_call_id")
_TOOL_TOP_KEYS = ("tools", "functions")
_BOM = b"\xef\xbb\xbf"


class LineError(msgspec.Struct, frozen=True):
    """What is wrong with one line of the file (line numbers start at 1)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class JsonlError(ValueError):
    """An uploaded file that cannot be used; `errors` lists the bad lines, `omitted` the rest."""

    def __init__(self, errors: list[LineError], omitted: int = 0) -> None:
        self.errors = errors
        self.omitted = omitted
        lines = [str(e) for e in errors]
        if omitted:
            lines.append(f"... and {omitted} more bad lines")
        total = len(errors) + omitted
        super().__init__(f"invalid training file ({total} bad lines):\n" + "\n".join(lines))


class _LineProblem(Exception):
    """Raised while checking one line; becomes a LineError."""


def validate_chat_jsonl(data: bytes, *, max_lines: int, max_line_bytes: int) -> list[Conversation]:
    """Parse an uploaded chat JSONL file, or raise JsonlError naming every bad line."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    conversations: list[Conversation] = []
    lines = ((raw, len(raw)) for raw in data.split(b"\n"))
    _check(lines, max_lines, max_line_bytes, conversations.append)
    return conversations


def count_chat_jsonl_file(path: Path, *, max_lines: int, max_line_bytes: int) -> int:
    """Check a file on disk as `validate_chat_jsonl` checks bytes, with at most one line (cut at
    the limit) in memory at a time; the number of examples, or JsonlError."""
    with path.open("rb") as fh:
        return _check(_file_lines(fh, max_line_bytes), max_lines, max_line_bytes, lambda _: None)


def _check(
    lines: Iterable[tuple[bytes, int]],
    max_lines: int,
    max_line_bytes: int,
    keep: Callable[[Conversation], None],
) -> int:
    """Parse (line, its size in bytes) pairs, handing each conversation to `keep`."""
    errors: list[LineError] = []
    examples = 0
    for number, (raw, size) in enumerate(lines, start=1):
        if not raw.strip():
            continue
        examples += 1
        if examples > max_lines:
            errors.append(LineError(number, f"the file has more than {max_lines} examples"))
            break
        try:
            keep(_parse_line(raw, size, max_line_bytes))
        except _LineProblem as problem:
            errors.append(LineError(number, str(problem)))
    if not errors and not examples:
        errors.append(LineError(1, "the file is empty: expected one JSON object per line"))
    if errors:
        raise JsonlError(errors[:MAX_REPORTED_ERRORS], max(0, len(errors) - MAX_REPORTED_ERRORS))
    return examples


def _file_lines(fh: BinaryIO, max_line_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Each line without its newline, with its size; a line past the limit is cut to its first
    max_line_bytes + 1 bytes (enough to refuse it) while the rest is counted and skipped."""
    number = 0
    while line := fh.readline(max_line_bytes + 2):
        number += 1
        if number == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        size, piece = len(line), line
        while not piece.endswith(b"\n") and (piece := fh.readline(1024 * 1024)):
            size += len(piece)
        if piece.endswith(b"\n"):
            size -= 1
        yield line.removesuffix(b"\n")[: max_line_bytes + 1], size


def _parse_line(raw: bytes, size: int, max_line_bytes: int) -> Conversation:
    if size > max_line_bytes:
        raise _LineProblem(f"the line is {size} bytes; the limit is {max_line_bytes}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _LineProblem(f"not valid UTF-8 (byte {exc.start + 1})") from None
    try:
        value: object = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise _LineProblem(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _LineProblem(f"expected a JSON object, got {_json_type(value)}")
    for key in _TOOL_TOP_KEYS:
        if value.get(key):
            raise _LineProblem(f'"{key}" is not supported (function calling cannot be trained)')
    messages = value.get("messages")
    if messages is None:
        raise _LineProblem('missing "messages"')
    if not isinstance(messages, list):
        raise _LineProblem(f'"messages" must be a list, got {_json_type(messages)}')
    conversation = [_parse_message(i, m) for i, m in enumerate(messages, start=1)]
    _check_shape(conversation)
    return conversation


def _parse_message(index: int, value: object) -> ChatMessage:
    where = f"message {index}"
    if not isinstance(value, dict):
        raise _LineProblem(f"{where}: expected an object, got {_json_type(value)}")
    role = value.get("role")
    if not isinstance(role, str):
        raise _LineProblem(f'{where}: "role" must be a string, got {_json_type(role)}')
    if role in _TOOL_ROLES:
        raise _LineProblem(f'{where}: role "{role}" is not supported (tool messages)')
    if role not in ROLES:
        raise _LineProblem(f'{where}: unknown role "{role}" (use system, user or assistant)')
    for key in _TOOL_KEYS:
        if key in value:
            raise _LineProblem(f'{where}: "{key}" is not supported (tool calls)')
    content = value.get("content")
    if isinstance(content, list):
        raise _LineProblem(f'{where}: content parts are not supported; "content" must be a string')
    if not isinstance(content, str):
        raise _LineProblem(f'{where}: "content" must be a string, got {_json_type(content)}')
    if role == "user":
        return {"role": "user", "content": content}
    if role == "system":
        return {"role": "system", "content": content}
    return {"role": "assistant", "content": content}


def _check_shape(conversation: Conversation) -> None:
    if not conversation:
        raise _LineProblem('"messages" is empty')
    if not any(m["role"] == "user" for m in conversation):
        raise _LineProblem("no user message")
    if conversation[-1]["role"] != "assistant":
        raise _LineProblem("the last message must be the assistant's answer")
    if not conversation[-1]["content"].strip():
        raise _LineProblem("the final assistant message is empty")


_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (type(None), "null"),
    (bool, "a boolean"),  # before int: a bool is an int
    (int, "a number"),
    (float, "a number"),
    (str, "a string"),
    (list, "a list"),
    (dict, "an object"),
)


def _json_type(value: object) -> str:
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "a value")
