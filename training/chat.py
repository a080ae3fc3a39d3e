"""The chat-format conversation shared by the dataset builder, the trainer and the evals."""

from __future__ import annotations

from typing import Literal, TypedDict

Role = Literal["system", "user", "assistant"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})


class ChatMessage(TypedDict):
    role: Role
    content: str


Conversation = list[ChatMessage]


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
