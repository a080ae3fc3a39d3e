"""The Responses API's response object, and a chat completion's answer read into it."""

from __future__ import annotations

from typing import Literal

import msgspec

from gateway.responses_translate import (
    Echo,
    FunctionCall,
    FunctionTool,
    InputText,
    Item,
    Message,
    OutputText,
    TextConfig,
    ToolChoice,
    new_id,
)

Status = Literal["in_progress", "completed", "incomplete", "failed"]


class InputDetails(msgspec.Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputDetails = msgspec.field(default_factory=InputDetails)
    output_tokens_details: OutputDetails = msgspec.field(default_factory=OutputDetails)


def usage_of(input_tokens: int | None, output_tokens: int | None) -> Usage | None:
    if input_tokens is None or output_tokens is None:
        return None
    total = input_tokens + output_tokens
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=total)


class ResponseError(msgspec.Struct):
    code: str
    message: str


class Incomplete(msgspec.Struct):
    reason: str


class Loopgate(msgspec.Struct):
    """loopgate's extension: the stored chat completion this response was served as (feedback,
    datasets and the adapter version are that completion's)."""

    completion_id: str | None


class State(msgspec.Struct, kw_only=True):
    """Everything a response is: rendered as the response object, stored as a record."""

    id: str
    created_at: float
    model: str
    echo: Echo
    previous_response_id: str | None
    store: bool
    input: list[Item]
    output: list[Item] = msgspec.field(default_factory=list)
    status: Status = "in_progress"
    usage: Usage | None = None
    completion_id: str | None = None
    error: ResponseError | None = None
    completed_at: float | None = None


class ResponseObject(msgspec.Struct, kw_only=True):
    """OpenAI's `Response` (the fields the official SDK reads)."""

    id: str
    object: Literal["response"] = "response"
    created_at: float
    status: Status
    error: ResponseError | None
    incomplete_details: Incomplete | None
    instructions: str | None
    metadata: dict[str, str]
    model: str
    output: list[Item]
    parallel_tool_calls: bool
    temperature: float | None
    tool_choice: ToolChoice
    tools: list[FunctionTool]
    top_p: float | None
    max_output_tokens: int | None
    previous_response_id: str | None
    text: TextConfig
    truncation: Literal["disabled"] = "disabled"
    usage: Usage | None
    user: str | None
    store: bool
    background: bool = False
    completed_at: float | None
    loopgate: Loopgate


def response_object(s: State) -> ResponseObject:
    e = s.echo
    incomplete = Incomplete("max_output_tokens") if s.status == "incomplete" else None
    return ResponseObject(
        id=s.id,
        created_at=s.created_at,
        status=s.status,
        error=s.error,
        incomplete_details=incomplete,
        instructions=e.instructions,
        metadata=e.metadata,
        model=s.model,
        output=s.output,
        parallel_tool_calls=e.parallel_tool_calls,
        temperature=e.temperature,
        tool_choice=e.tool_choice,
        tools=e.tools,
        top_p=e.top_p,
        max_output_tokens=e.max_output_tokens,
        previous_response_id=s.previous_response_id,
        text=e.text,
        usage=s.usage,
        user=e.user,
        store=s.store,
        completed_at=s.completed_at,
        loopgate=Loopgate(s.completion_id),
    )


class _ChatFunction(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ChatCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _ChatFunction = msgspec.field(default_factory=_ChatFunction)


class _ChatMessage(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ChatCall] | None = None


class _ChatChoice(msgspec.Struct):
    message: _ChatMessage | None = None
    delta: _ChatMessage | None = None
    finish_reason: str | None = None


class _ChatUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _ChatError(msgspec.Struct):
    message: str = "the engine failed"
    code: str | int | None = None


class ChatBody(msgspec.Struct):
    """A chat completion, or one chunk of a streamed one."""

    id: str = ""
    choices: list[_ChatChoice] = msgspec.field(default_factory=list)
    usage: _ChatUsage | None = None
    error: _ChatError | None = None


_chat_body = msgspec.json.Decoder(ChatBody)


def finished(finish_reason: str | None) -> Status:
    return "incomplete" if finish_reason == "length" else "completed"


def answer(state: State, body: bytes, now: float) -> None:
    """Fill the response in from a (non-streamed) chat completion."""
    chat = _chat_body.decode(body)
    state.completion_id = chat.id or None
    choice = chat.choices[0] if chat.choices else _ChatChoice()
    message = choice.message or _ChatMessage()
    status = finished(choice.finish_reason)
    if message.content:
        text: list[InputText | OutputText] = [OutputText(message.content)]
        state.output.append(Message(id=new_id("msg"), role="assistant", content=text))
    for call in message.tool_calls or []:
        state.output.append(_function_call(call))
    if chat.usage is not None:
        state.usage = usage_of(chat.usage.prompt_tokens, chat.usage.completion_tokens)
    state.status, state.completed_at = status, now


def _function_call(call: ChatCall) -> FunctionCall:
    return FunctionCall(
        id=new_id("fc"),
        call_id=call.id or new_id("call"),
        name=call.function.name or "",
        arguments=call.function.arguments or "",
    )
