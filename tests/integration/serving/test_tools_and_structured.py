"""Tool calling and structured outputs through the gateway against the real engine: the
embedded engine starts with a tool-call parser and a tool-aware chat template for the bundled
model, and the engine's guided decoding enforces JSON schemas and required tool calls."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.engine

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "strict": True,  # the engine holds the arguments to the schema (as OpenAI's strict)
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "is_capital": {"type": "boolean"},
    },
    "required": ["city", "country", "is_capital"],
    "additionalProperties": False,
}


def test_a_json_schema_response_format_is_enforced(stack: Stack) -> None:
    resp = stack.client().chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY, "strict": True},
        },
        temperature=0,
        max_tokens=80,
    )
    assert resp.choices[0].finish_reason == "stop", resp.choices[0].message.content
    jsonschema.validate(json.loads(resp.choices[0].message.content or ""), CITY)


def test_json_object_mode_answers_json(stack: Stack) -> None:
    """json_object holds the answer to JSON's grammar (not its length: a small model may run to
    max_tokens inside a string, so only a finished answer must parse)."""
    resp = stack.client().chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": 'Answer with {"animal": "cat"} only.'}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=120,
    )
    content = (resp.choices[0].message.content or "").lstrip()
    assert content.startswith("{"), content
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


@pytest.mark.parametrize(
    ("choice", "name"),
    [("required", None), ({"type": "function", "function": {"name": "get_time"}}, "get_time")],
)
def test_required_and_named_tool_choices_call_a_tool_with_valid_arguments(
    stack: Stack, choice: object, name: str | None
) -> None:
    resp = stack.client().chat.completions.create(
        model="smollm2",
        messages=ASK,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice=choice,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=80,
    )
    calls = resp.choices[0].message.tool_calls or []
    assert calls, resp.choices[0].message
    call = calls[0]
    assert call.function.name == (name or call.function.name) in ("get_weather", "get_time")
    schema = (WEATHER if call.function.name == "get_weather" else TIME)["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), schema)  # type: ignore[arg-type]


def test_tool_choice_none_answers_in_text(stack: Stack) -> None:
    resp = stack.client().chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=24
    )
    assert not resp.choices[0].message.tool_calls and resp.choices[0].message.content


def test_streamed_tool_call_deltas_reassemble_into_the_call(stack: Stack) -> None:
    stream = stack.client().chat.completions.create(
        model="smollm2",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=80,
        stream=True,
    )
    names, arguments = [], []
    for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if call.function and call.function.name:
                names.append(call.function.name)
            if call.function and call.function.arguments:
                arguments.append(call.function.arguments)
    assert names == ["get_weather"]
    jsonschema.validate(json.loads("".join(arguments)), WEATHER["function"]["parameters"])  # type: ignore[index]


def test_a_tool_result_in_a_follow_up_turn_is_answered(stack: Stack) -> None:
    client = stack.client()
    first = client.chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=80
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    follow = client.chat.completions.create(
        model="smollm2",
        messages=[
            *ASK,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": call.function.arguments,
                        },
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": call.id,
                "content": '{"temperature": 18, "sky": "clear"}',
            },
        ],
        tools=[WEATHER],
        max_tokens=40,
    )
    assert follow.choices[0].finish_reason in ("stop", "length")
    assert follow.choices[0].message.content or follow.choices[0].message.tool_calls
