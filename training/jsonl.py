"""Validation of uploaded training files in OpenAI's fine-tuning JSONL formats (chat and DPO).

Chat (supervised): one JSON object per line, `{"messages": [{"role": ..., "content": ...}, ...]}`
with roles `system`, `user` and `assistant`, string contents, at least one user message, and an
assistant message last (the answer that is learned). An optional `weight` on assistant messages
and a `name` on any message are accepted and ignored.

Preference (DPO): `{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant",
"content": ...}], "non_preferred_output": [...]}`: the input's messages as above but ending with
a user turn, and one non-empty assistant message on each side. A line becomes the conversation
input + preferred answer, and the rejected answer beside it.

Tool use (chat): a top-level `tools` list (`{"type": "function", "function": {"name", ...}}`),
assistant messages with `tool_calls` (`[{"id", "type": "function", "function": {"name",
"arguments"}}]`, content then optional) and `tool` messages answering a call by
`tool_call_id`; the last assistant message may be a tool call. The legacy `functions` /
`function_call` / `function` role and content parts are not supported.

A file holds one shape; the first example decides which (or the caller does, `kind`). Blank
lines are skipped.
Every line is checked and every bad line is reported (up to `MAX_REPORTED_ERRORS`), each with
its 1-based line number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import msgspec

from training.chat import ROLES, ChatMessage, Conversation, ToolCall, ToolSpec, with_tools

MAX_REPORTED_ERRORS = 50
_TOOL_ROLES = frozenset({"function"})
_TOOL_KEYS = ("function_call",)
_TOOL_TOP_KEYS = ("functions",)
_BOM = b"\xef\xbb\xbf"
Kind = Literal["chat", "preference"]
KIND_NAMES: dict[Kind, str] = {
    "chat": 'a chat example ({"messages": [...]})',
    "preference": "a preference (DPO) example "
    '({"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]})',
}


class TrainingLine(NamedTuple):
    """One example: the conversation learned from, and (DPO) the answer rejected beside it."""

    conversation: Conversation
    rejected: str | None = None


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
    """Parse an uploaded JSONL file's conversations (a DPO file's: input + preferred answer), or
    raise JsonlError naming every bad line."""
    lines = validate_training_jsonl(data, max_lines=max_lines, max_line_bytes=max_line_bytes)
    return [line.conversation for line in lines]


def validate_training_jsonl(
    data: bytes, *, max_lines: int, max_line_bytes: int, kind: Kind | None = None
) -> list[TrainingLine]:
    """Parse an uploaded chat or DPO JSONL file (of `kind`, or the first example's), or raise
    JsonlError naming every bad line."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    parsed: list[TrainingLine] = []
    lines = ((raw, len(raw)) for raw in data.split(b"\n"))
    _check(lines, max_lines, max_line_bytes, parsed.append, kind)
    return parsed


def count_chat_jsonl_file(
    path: Path, *, max_lines: int, max_line_bytes: int, kind: Kind | None = None
) -> int:
    """Check a file on disk as `validate_training_jsonl` checks bytes, with at most one line (cut
    at the limit) in memory at a time; the number of examples, or JsonlError."""
    with path.open("rb") as fh:
        lines = _file_lines(fh, max_line_bytes)
        return _check(lines, max_lines, max_line_bytes, lambda _: None, kind)


def _check(
    lines: Iterable[tuple[bytes, int]],
    max_lines: int,
    max_line_bytes: int,
    keep: Callable[[TrainingLine], None],
    kind: Kind | None = None,
) -> int:
    """Parse (line, its size in bytes) pairs, handing each example to `keep`; every example must
    be of `kind` (None: of the first example's kind)."""
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
            line, line_kind = _parse_line(raw, size, max_line_bytes)
            kind = kind or line_kind
            if line_kind != kind:
                raise _LineProblem(_other_shape(kind, line_kind))
            keep(line)
        except _LineProblem as problem:
            errors.append(LineError(number, str(problem)))
    if not errors and not examples:
        errors.append(LineError(1, "the file is empty: expected one JSON object per line"))
    if errors:
        raise JsonlError(errors[:MAX_REPORTED_ERRORS], max(0, len(errors) - MAX_REPORTED_ERRORS))
    return examples


def check_file_kind(path: Path, kind: Kind, *, max_line_bytes: int) -> None:
    """Whether a file already checked whole (`count_chat_jsonl_file`, at upload: every line has
    its first example's shape) is of `kind`: only its first example is read; JsonlError if not."""
    with path.open("rb") as fh:
        for number, (raw, size) in enumerate(_file_lines(fh, max_line_bytes), start=1):
            if not raw.strip():
                continue
            try:
                _, line_kind = _parse_line(raw, size, max_line_bytes)
                if line_kind != kind:
                    raise _LineProblem(_other_shape(kind, line_kind))
            except _LineProblem as problem:
                raise JsonlError([LineError(number, str(problem))], 0) from None
            return
    raise JsonlError([LineError(1, "the file is empty: expected one JSON object per line")], 0)


def _other_shape(kind: Kind, line_kind: Kind) -> str:
    return (
        f"expected {KIND_NAMES[kind]}, got {KIND_NAMES[line_kind]}; every line of a file has "
        "the same shape"
    )


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


def _parse_line(raw: bytes, size: int, max_line_bytes: int) -> tuple[TrainingLine, Kind]:
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
    if "input" in value or "preferred_output" in value:
        return _parse_preference(value), "preference"
    conversation = _parse_messages(value, "")
    _check_shape(conversation)
    return TrainingLine(with_tools(conversation, _parse_tools(value.get("tools")))), "chat"


def _parse_tools(value: object) -> list[ToolSpec] | None:
    if value is None:
        return None
    try:
        return msgspec.convert(value, list[ToolSpec])
    except msgspec.ValidationError as exc:
        raise _LineProblem(f'"tools" must be a list of function tools: {exc}') from None


def _parse_tool_calls(where: str, value: object) -> list[ToolCall]:
    try:
        calls = msgspec.convert(value, list[ToolCall])
    except msgspec.ValidationError as exc:
        raise _LineProblem(
            f'{where}: "tool_calls" must be a list of function calls: {exc}'
        ) from None
    if not calls:
        raise _LineProblem(f'{where}: "tool_calls" is empty')
    return calls


def _parse_messages(value: dict[str, object], where: str) -> Conversation:
    messages = value.get("messages")
    if messages is None:
        raise _LineProblem(f'missing "{where}messages"')
    if not isinstance(messages, list):
        raise _LineProblem(f'"{where}messages" must be a list, got {_json_type(messages)}')
    return [_parse_message(i, m) for i, m in enumerate(messages, start=1)]


def _parse_preference(value: dict[str, object]) -> TrainingLine:
    """A DPO line: the input's messages (ending with the user's turn) and two answers."""
    given = value.get("input")
    if not isinstance(given, dict):
        raise _LineProblem(f'"input" must be an object with "messages", got {_json_type(given)}')
    for key in ("tools", *_TOOL_TOP_KEYS):
        if given.get(key):
            raise _LineProblem(f'"input.{key}" is not supported in preference (DPO) lines')
    prompt = _parse_messages(given, "input.")
    if not any(m["role"] == "user" for m in prompt):
        raise _LineProblem("no user message in input.messages")
    if prompt[-1]["role"] != "user":
        raise _LineProblem("input.messages must end with the user's turn (the answers follow it)")
    chosen = _parse_output(value, "preferred_output")
    rejected = _parse_output(value, "non_preferred_output")
    if chosen == rejected:
        raise _LineProblem("preferred_output and non_preferred_output are the same answer")
    return TrainingLine([*prompt, {"role": "assistant", "content": chosen}], rejected)


def _parse_output(value: dict[str, object], key: str) -> str:
    """The one assistant message of `preferred_output` / `non_preferred_output`."""
    output = value.get(key)
    if not isinstance(output, list) or len(output) != 1:
        raise _LineProblem(f'"{key}" must be a list of one assistant message')
    message = _parse_message(1, output[0])
    if message["role"] != "assistant" or not message["content"].strip():
        raise _LineProblem(f'"{key}" must hold one non-empty assistant message')
    return message["content"]


def _parse_message(index: int, value: object) -> ChatMessage:
    where = f"message {index}"
    if not isinstance(value, dict):
        raise _LineProblem(f"{where}: expected an object, got {_json_type(value)}")
    role = _role(where, value)
    content = _content(where, value)
    calls = value.get("tool_calls")
    if calls is not None and role != "assistant":
        raise _LineProblem(f'{where}: only assistant messages have "tool_calls"')
    if role == "tool":
        return _tool_result(where, value, content)
    if "tool_call_id" in value:
        raise _LineProblem(f'{where}: only tool messages have "tool_call_id"')
    if role == "user":
        return {"role": "user", "content": content}
    if role == "system":
        return {"role": "system", "content": content}
    if calls is not None:
        return {
            "role": "assistant",
            "content": content,
            "tool_calls": _parse_tool_calls(where, calls),
        }
    return {"role": "assistant", "content": content}


def _role(where: str, value: dict[str, object]) -> str:
    role = value.get("role")
    if not isinstance(role, str):
        raise _LineProblem(f'{where}: "role" must be a string, got {_json_type(role)}')
    if role in _TOOL_ROLES:
        raise _LineProblem(f'{where}: role "{role}" is not supported (use "tool")')
    if role not in ROLES and role != "tool":
        raise _LineProblem(f'{where}: unknown role "{role}" (use system, user, assistant or tool)')
    for key in _TOOL_KEYS:
        if key in value:
            raise _LineProblem(f'{where}: "{key}" is not supported (use "tool_calls")')
    return role


def _content(where: str, value: dict[str, object]) -> str:
    """A message's text ('' for a bare tool call, whose content may be null or absent)."""
    content = value.get("content")
    if content is None and value.get("tool_calls") is not None:
        return ""
    if isinstance(content, list):
        raise _LineProblem(f'{where}: content parts are not supported; "content" must be a string')
    if not isinstance(content, str):
        raise _LineProblem(f'{where}: "content" must be a string, got {_json_type(content)}')
    return content


def _tool_result(where: str, value: dict[str, object], content: str) -> ChatMessage:
    call_id = value.get("tool_call_id")
    if not isinstance(call_id, str):
        raise _LineProblem(f'{where}: a tool message needs its "tool_call_id" (a string)')
    return {"role": "tool", "content": content, "tool_call_id": call_id}


def _check_shape(conversation: Conversation) -> None:
    if not conversation:
        raise _LineProblem('"messages" is empty')
    if not any(m["role"] == "user" for m in conversation):
        raise _LineProblem("no user message")
    if conversation[-1]["role"] != "assistant":
        raise _LineProblem("the last message must be the assistant's answer")
    if not conversation[-1]["content"].strip() and not conversation[-1].get("tool_calls"):
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
