"""The Responses API as chat completions: its wire types, a request's translation into the chat
request the gateway serves, and a chat answer's (or a chat stream's) translation back.

Pure functions and structs, no I/O. The items a response stores (input and output) are typed
here, and a stored response's JSON is decoded with these types (`decode_items`, `decode_echo`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from gateway.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    Metadata,
    ModelName,
    PositiveInt,
    StreamOptions,
)
from store.errors import InvalidRequest
from store.privacy import redact

ItemStatus = Literal["in_progress", "completed", "incomplete"]
Role = Literal["user", "assistant", "system", "developer"]
ResponseId = Annotated[str, Meta(min_length=1, max_length=128)]
T = TypeVar("T")

# --- what a client sends ----------------------------------------------------------------------


class ContentIn(msgspec.Struct, kw_only=True):
    """A text part of an input message (output_text: an earlier answer passed back)."""

    type: Literal["input_text", "output_text"]
    text: str


class ItemIn(msgspec.Struct, kw_only=True):
    """One input item, as loose as clients send it (`type` may be left out of a message)."""

    type: Literal["message", "function_call", "function_call_output"] = "message"
    id: str | UnsetType = UNSET
    role: Role | UnsetType = UNSET
    content: str | list[ContentIn] | UnsetType = UNSET
    call_id: str | UnsetType = UNSET
    name: str | UnsetType = UNSET
    arguments: str | UnsetType = UNSET
    output: str | UnsetType = UNSET


class TextFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | UnsetType = UNSET
    schema: dict[str, object] | UnsetType = UNSET
    description: str | UnsetType = UNSET
    strict: bool | UnsetType | None = UNSET


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat = msgspec.field(default_factory=lambda: TextFormat(type="text"))


class FunctionTool(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None


class NamedFunction(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    name: str


ToolChoice = Literal["auto", "none", "required"] | NamedFunction


class ResponsesRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/responses`: a field not declared here is a 400 (hosted tools, background mode,
    conversations, reasoning... are not served; refusing beats silently ignoring them)."""

    model: ModelName
    input: Annotated[str, Meta(min_length=1)] | Annotated[list[ItemIn], Meta(min_length=1)]
    instructions: str | None = None
    previous_response_id: ResponseId | None = None
    stream: bool = False
    store: bool | None = None
    metadata: Metadata | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    tools: list[FunctionTool] = msgspec.field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    truncation: Literal["disabled"] | None = None


# --- the items a response holds (stored, listed, answered) --------------------------------------


class InputText(msgspec.Struct, tag_field="type", tag="input_text"):
    text: str


class OutputText(msgspec.Struct, tag_field="type", tag="output_text"):
    text: str
    annotations: list[object] = msgspec.field(default_factory=list)


class Message(msgspec.Struct, tag_field="type", tag="message", kw_only=True):
    id: str
    role: Role
    content: list[InputText | OutputText]
    status: ItemStatus = "completed"


class FunctionCall(msgspec.Struct, tag_field="type", tag="function_call", kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus = "completed"


class FunctionCallOutput(
    msgspec.Struct, tag_field="type", tag="function_call_output", kw_only=True
):
    id: str
    call_id: str
    output: str
    status: ItemStatus = "completed"


Item = Message | FunctionCall | FunctionCallOutput


class Echo(msgspec.Struct, kw_only=True):
    """The settings a response reports back (stored as its `request` JSON)."""

    instructions: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    tools: list[FunctionTool] = msgspec.field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    user: str | None = None


_request = msgspec.json.Decoder(ResponsesRequest)
_items = msgspec.json.Decoder(list[Item])
_echo = msgspec.json.Decoder(Echo)
_encoder = msgspec.json.Encoder()


_PATH = re.compile(r"`\$\.([^`]+)`")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")


def decode_request(body: bytes) -> ResponsesRequest:
    """The request, validated (a 400 naming the offending field when it does not fit)."""
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return _request.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid request: {exc}", param=_param(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def _param(error: str) -> str | None:
    """The field a msgspec error names: "... - at `$.input[0].role`", or an unknown field."""
    paths = _PATH.findall(error)
    unknown = _UNKNOWN.search(error)
    if unknown is not None:
        return ".".join([*paths[-1:], unknown.group(1)])
    return paths[-1] if paths else None


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def encode(value: object) -> str:
    return _encoder.encode(value).decode()


def decode_items(text: str | None) -> list[Item]:
    return _items.decode(text) if text else []


def decode_echo(text: str | None) -> Echo:
    return _echo.decode(text) if text else Echo()


def echo_of(req: ResponsesRequest) -> Echo:
    return Echo(
        instructions=req.instructions,
        metadata=dict(req.metadata or {}),
        temperature=req.temperature,
        top_p=req.top_p,
        max_output_tokens=req.max_output_tokens,
        text=req.text,
        tools=req.tools,
        tool_choice=req.tool_choice,
        parallel_tool_calls=req.parallel_tool_calls,
        user=req.user,
    )


# --- request: Responses -> chat -----------------------------------------------------------------


def input_items(req: ResponsesRequest) -> list[Item]:
    """The request's input as typed items, each with an id (a string is one user message)."""
    if isinstance(req.input, str):
        return [Message(id=new_id("msg"), role="user", content=[InputText(req.input)])]
    return [_item(item, f"input[{i}]") for i, item in enumerate(req.input)]


def _item(item: ItemIn, where: str) -> Item:
    if item.type == "message":
        return _message(item, where)
    if item.type == "function_call":
        return FunctionCall(
            id=_or_new(item.id, "fc"),
            call_id=_needed(item.call_id, where, "call_id"),
            name=_needed(item.name, where, "name"),
            arguments=_needed(item.arguments, where, "arguments"),
        )
    return FunctionCallOutput(
        id=_or_new(item.id, "fco"),
        call_id=_needed(item.call_id, where, "call_id"),
        output=_needed(item.output, where, "output"),
    )


def _message(item: ItemIn, where: str) -> Message:
    role, content = item.role, item.content
    if isinstance(role, UnsetType):
        raise _missing(where, "role")
    if isinstance(content, UnsetType):
        raise _missing(where, "content")
    parts = [ContentIn(type="input_text", text=content)] if isinstance(content, str) else content
    typed: list[InputText | OutputText] = [
        OutputText(p.text) if role == "assistant" or p.type == "output_text" else InputText(p.text)
        for p in parts
    ]
    return Message(id=_or_new(item.id, "msg"), role=role, content=typed)


def _needed(value: str | UnsetType, where: str, name: str) -> str:
    if isinstance(value, UnsetType):
        raise _missing(where, name)
    return value


def _missing(where: str, name: str) -> InvalidRequest:
    return InvalidRequest(f"{where} needs '{name}'", param=f"{where}.{name}")


def _or_new(value: str | UnsetType, prefix: str) -> str:
    return value if isinstance(value, str) and value else new_id(prefix)


class ChatFunction(msgspec.Struct):
    name: str
    arguments: str


class ChatToolCall(msgspec.Struct):
    id: str
    function: ChatFunction
    type: str = "function"


class ChatText(msgspec.Struct):
    text: str
    type: str = "text"


class ChatFunctionDef(msgspec.Struct, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None


class ChatTool(msgspec.Struct):
    function: ChatFunctionDef
    type: str = "function"


def chat_messages(instructions: str | None, items: Sequence[Item]) -> list[ChatMessage]:
    """The conversation as chat messages: instructions as the system message, then the items
    (function calls join the assistant message before them; their outputs are tool messages)."""
    out = [ChatMessage(role="system", content=instructions)] if instructions else []
    for item in items:
        if isinstance(item, Message):
            out.append(ChatMessage(role=item.role, content=_chat_content(item.content)))
        elif isinstance(item, FunctionCall):
            call = ChatToolCall(item.call_id, ChatFunction(item.name, item.arguments))
            if not out or out[-1].role != "assistant":
                out.append(ChatMessage(role="assistant", tool_calls=[]))
            calls = out[-1].tool_calls
            out[-1].tool_calls = [*([] if isinstance(calls, UnsetType) else calls), call]
        else:
            out.append(ChatMessage(role="tool", content=item.output, tool_call_id=item.call_id))
    return out


def _chat_content(parts: list[InputText | OutputText]) -> str | list[object]:
    if len(parts) == 1:
        return parts[0].text
    return [ChatText(p.text) for p in parts]


def chat_request(req: ResponsesRequest, messages: list[ChatMessage]) -> ChatCompletionRequest:
    """The chat request a Responses request is served as (through the gateway's chat path)."""
    tools: list[object] = [
        ChatTool(ChatFunctionDef(t.name, t.description, t.parameters, t.strict)) for t in req.tools
    ]
    return ChatCompletionRequest(
        model=req.model,
        messages=messages,
        stream=req.stream,
        stream_options=StreamOptions(include_usage=True) if req.stream else UNSET,
        max_tokens=_given(req.max_output_tokens),
        temperature=_given(req.temperature),
        top_p=_given(req.top_p),
        user=req.user if req.user is not None else UNSET,
        response_format=_response_format(req.text.format),
        tools=tools or UNSET,
        tool_choice=_tool_choice(req.tool_choice) if tools else UNSET,
        parallel_tool_calls=req.parallel_tool_calls if tools else UNSET,
        store=_given(req.store),
        metadata=_given(req.metadata),
    )


def _given(value: T | None) -> T | UnsetType:
    return UNSET if value is None else value


class ChatSchema(msgspec.Struct, omit_defaults=True):
    name: str
    schema: dict[str, object]
    description: str | UnsetType = UNSET
    strict: bool | UnsetType | None = UNSET


class ChatFormat(msgspec.Struct, omit_defaults=True):
    type: str
    json_schema: ChatSchema | UnsetType = UNSET


def _response_format(fmt: TextFormat) -> object:
    if fmt.type == "text":
        return UNSET
    if fmt.type == "json_object":
        return ChatFormat("json_object")
    if isinstance(fmt.name, UnsetType) or isinstance(fmt.schema, UnsetType):
        raise InvalidRequest(
            "text.format of type json_schema needs 'name' and 'schema'", param="text.format"
        )
    return ChatFormat("json_schema", ChatSchema(fmt.name, fmt.schema, fmt.description, fmt.strict))


class ChatNamed(msgspec.Struct):
    name: str


class ChatChoice(msgspec.Struct):
    function: ChatNamed
    type: str = "function"


def _tool_choice(choice: ToolChoice) -> object:
    return choice if isinstance(choice, str) else ChatChoice(ChatNamed(choice.name))


def scrubbed(items: list[Item]) -> list[Item]:
    """The items with their free text PII-redacted (ids, roles and names kept)."""
    return [_scrub(item) for item in items]


def _scrub(item: Item) -> Item:
    replace = msgspec.structs.replace
    if isinstance(item, Message):
        return replace(item, content=[replace(p, text=redact(p.text).text) for p in item.content])
    if isinstance(item, FunctionCall):
        return replace(item, arguments=redact(item.arguments).text)
    return replace(item, output=redact(item.output).text)
