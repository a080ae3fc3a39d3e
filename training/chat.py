"""The chat-format conversation shared by the dataset builder, the trainer and the evals.

A conversation may use tools, in OpenAI's chat shape: an assistant turn with `tool_calls` (its
`content` then often empty), a `tool` turn answering one call by `tool_call_id`, and the list of
tools the request offered, carried beside the messages (`ToolConversation`, OpenAI's top-level
"tools" of a fine-tuning line).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NotRequired, TypedDict

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})


class ToolFunction(TypedDict):
    name: str
    arguments: str  # JSON text, as the model writes it


class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: ToolFunction


class FunctionSpec(TypedDict):
    name: str
    description: NotRequired[str | None]
    parameters: NotRequired[dict[str, object]]  # a JSON schema, kept as it was sent
    strict: NotRequired[bool | None]


class ToolSpec(TypedDict):
    """One tool a request offered (OpenAI's `tools` item)."""

    type: Literal["function"]
    function: FunctionSpec


class ChatMessage(TypedDict):
    role: Role
    content: str
    tool_calls: NotRequired[list[ToolCall]]
    tool_call_id: NotRequired[str]


Conversation = list[ChatMessage]


class ToolConversation(list[ChatMessage]):
    """A conversation with the tools its request offered (the chat template lists them)."""

    def __init__(self, messages: Iterable[ChatMessage], tools: list[ToolSpec]) -> None:
        super().__init__(messages)
        self.tools = tools


def tools_of(conversation: Conversation) -> list[ToolSpec] | None:
    """The tools offered with a conversation, when it carries them."""
    return conversation.tools if isinstance(conversation, ToolConversation) else None


def with_tools(messages: Conversation, tools: list[ToolSpec] | None) -> Conversation:
    """`messages` carrying `tools` (as they are when there are none)."""
    return ToolConversation(messages, tools) if tools else messages


def prompt_of(conversation: Conversation) -> Conversation:
    """Everything before the final assistant turn (what the model is asked)."""
    if not conversation or conversation[-1]["role"] != "assistant":
        return list(conversation)
    return list(conversation[:-1])


def answer_of(conversation: Conversation) -> str:
    """The final assistant turn's text ('' when the conversation does not end with one)."""
    if conversation and conversation[-1]["role"] == "assistant":
        return conversation[-1]["content"]
    return ""


def text_of(message: ChatMessage) -> str:
    """A message's text with its tool calls written out (name and arguments), for what looks at
    the words of an example: quality, dedup, length."""
    calls = message.get("tool_calls") or []
    written = [f"{c['function']['name']} {c['function']['arguments']}" for c in calls]
    return "\n".join([message["content"], *written]) if written else message["content"]
