"""The Responses API through the official openai SDK against the in-process gateway (vLLM faked
at the network edge): every request is served as a chat completion on the chat path, so what
the engine receives is checked as well as what the client reads; plus the store on both backends."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from store import ApiKey, Completion, StoredResponse, open_store
from tests.unit.conftest import Env
from tests.unit.fake_engine import ENGINE_MODEL, ChunkStream, chat_body
from tests.unit.sdk_client import sdk
from tests.unit.test_adapters_api import promote, upload
from tests.unit.test_review_in_datasets import build

MODEL = "smollm2"  # every tenant's default alias, on the base model


def sent(env: Env) -> dict[str, Any]:
    """The last chat request the engine received."""
    return env.engine.bodies()[-1]


def roles_and_text(messages: list[dict[str, Any]]) -> list[tuple[str, object]]:
    return [(m["role"], m.get("content")) for m in messages]


def test_a_response_is_served_as_a_chat_completion_on_the_chat_path(env: Env) -> None:
    client = sdk(env)
    resp = client.responses.create(
        model=MODEL, input="What is the capital of France?", instructions="Answer briefly."
    )
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert resp.status == "completed" and resp.model == MODEL
    assert resp.output_text == "Paris."
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (5, 2, 7)
    body = sent(env)
    assert body["model"] == ENGINE_MODEL and body["cache_salt"]  # the chat path's own fields
    assert roles_and_text(body["messages"]) == [
        ("system", "Answer briefly."),
        ("user", "What is the capital of France?"),
    ]
    assert "store" not in body and "metadata" not in body  # gateway-side, never forwarded


def test_settings_are_translated_and_echoed(env: Env) -> None:
    client = sdk(env)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    resp = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Capital?"}]}],
        max_output_tokens=17,
        temperature=0.3,
        top_p=0.9,
        user="u-7",
        metadata={"ticket": "42"},
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    body = sent(env)
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["user"]) == (
        17,
        0.3,
        0.9,
        "u-7",
    )
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": schema, "strict": True},
    }
    assert (resp.max_output_tokens, resp.temperature, resp.top_p, resp.user) == (
        17,
        0.3,
        0.9,
        "u-7",
    )
    assert resp.metadata == {"ticket": "42"}
    assert resp.text is not None and resp.text.format is not None
    assert resp.text.format.type == "json_schema"
    client.responses.create(model=MODEL, input="x", text={"format": {"type": "json_object"}})
    assert sent(env)["response_format"] == {"type": "json_object"}


def test_the_stream_sends_the_typed_events_in_order(env: Env) -> None:
    client = sdk(env)
    events = list(client.responses.create(model=MODEL, input="Capital of France?", stream=True))
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(env.engine.stream_words),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "The capital is Paris."
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == deltas
    assert sent(env)["stream_options"] == {"include_usage": True}
    again = client.responses.retrieve(done.response.id)
    assert again.output_text == deltas and again.status == "completed"


def test_retrieve_input_items_and_delete(env: Env) -> None:
    client = sdk(env)
    resp = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "First question."},
            {"role": "assistant", "content": "First answer."},
            {"role": "user", "content": "Second question."},
        ],
    )
    got = client.responses.retrieve(resp.id)
    assert got.id == resp.id and got.output_text == "Paris."
    items = client.responses.input_items.list(resp.id)  # newest first, as OpenAI lists them
    texts = [i.content[0].text for i in items.data]  # type: ignore[union-attr]
    assert texts == ["Second question.", "First answer.", "First question."]
    oldest = client.responses.input_items.list(resp.id, order="asc", limit=1)
    assert [i.content[0].text for i in oldest.data] == ["First question."]  # type: ignore[union-attr]
    assert oldest.has_more
    completion = resp.model_extra["loopgate"]["completion_id"]  # type: ignore[index]
    assert (
        env.client.get(f"/v1/chat/completions/{completion}", headers=env.auth()).status_code == 200
    )
    client.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(resp.id)
    gone = env.client.get(f"/v1/chat/completions/{completion}", headers=env.auth())
    assert gone.status_code == 404  # the captured exchange went with it


def test_previous_response_id_sends_the_whole_conversation(env: Env) -> None:
    client = sdk(env)
    first = client.responses.create(model=MODEL, input="My name is Ann.", instructions="Be kind.")
    env.engine.reply = "Hello Ann."
    second = client.responses.create(
        model=MODEL, input="I live in Oslo.", previous_response_id=first.id
    )
    env.engine.reply = "Ann, from Oslo."
    third = client.responses.create(
        model=MODEL,
        input="Who am I?",
        previous_response_id=second.id,
        instructions="Be terse.",
    )
    assert third.previous_response_id == second.id and third.output_text == "Ann, from Oslo."
    assert roles_and_text(sent(env)["messages"]) == [
        ("system", "Be terse."),  # instructions are not carried over (as OpenAI does)
        ("user", "My name is Ann."),
        ("assistant", "Paris."),
        ("user", "I live in Oslo."),
        ("assistant", "Hello Ann."),
        ("user", "Who am I?"),
    ]
    items = client.responses.input_items.list(third.id)
    assert [i.content[0].text for i in items.data] == ["Who am I?"]  # type: ignore[union-attr]


def test_another_tenants_response_is_an_unknown_one(env: Env) -> None:
    theirs = sdk(env).responses.create(model=MODEL, input="secret plans")
    mine = sdk(env, env.globex_key)
    seen = len(env.engine.requests)
    for rid in (theirs.id, "resp_" + "0" * 48):
        with pytest.raises(openai.NotFoundError) as caught:
            mine.responses.retrieve(rid)
        assert caught.value.body["param"] == "response_id"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            mine.responses.input_items.list(rid)
        with pytest.raises(openai.NotFoundError):
            mine.responses.delete(rid)
        with pytest.raises(openai.NotFoundError) as caught:
            mine.responses.create(model=MODEL, input="more", previous_response_id=rid)
        assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert len(env.engine.requests) == seen  # nothing reached the engine
    assert sdk(env).responses.retrieve(theirs.id).output_text == "Paris."


def test_a_response_not_stored_cannot_be_read_or_continued(env: Env) -> None:
    client = sdk(env)
    resp = client.responses.create(model=MODEL, input="forget this", store=False)
    assert resp.output_text == "Paris." and resp.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="go on", previous_response_id=resp.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    completion = resp.model_extra["loopgate"]["completion_id"]  # type: ignore[index]
    assert (
        env.client.get(f"/v1/chat/completions/{completion}", headers=env.auth()).status_code == 404
    )


def tool_reply(request: httpx.Request) -> httpx.Response:
    """The engine asks for a tool call (or, once the tool answered, answers in text)."""
    body = json.loads(request.content)
    cid = "chatcmpl-" + request.headers["x-request-id"]
    if body["messages"][-1]["role"] == "tool":
        return httpx.Response(200, json=chat_body("It is 21 C in Oslo.", body["model"], cid))
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
    }
    reply = chat_body("", body["model"], cid)
    reply["choices"] = [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": [call]},
            "finish_reason": "tool_calls",
        }
    ]
    return httpx.Response(200, json=reply)


WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}


def test_function_tools_are_translated_both_ways(env: Env) -> None:
    env.engine.custom = tool_reply
    client = sdk(env)
    asked = client.responses.create(
        model=MODEL, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required"
    )
    body = sent(env)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": False,
            },
        }
    ]
    assert body["tool_choice"] == "required"
    (call,) = asked.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_1", "weather", '{"city": "Oslo"}')
    done = client.responses.create(
        model=MODEL,
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "21 C"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "weather"},
    )
    assert done.output_text == "It is 21 C in Oslo."
    messages = sent(env)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    assert messages[2] == {"role": "tool", "content": "21 C", "tool_call_id": "call_1"}
    assert sent(env)["tool_choice"] == {"type": "function", "function": {"name": "weather"}}


def streamed_tool_call(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)

    def event(delta: dict[str, object], finish: str | None = None) -> bytes:
        chunk = {
            "id": "chatcmpl-" + request.headers["x-request-id"],
            "object": "chat.completion.chunk",
            "model": body["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    start = {"index": 0, "id": "call_9", "function": {"name": "weather", "arguments": '{"ci'}}
    rest = {"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}
    chunks = [
        event({"role": "assistant", "tool_calls": [start]}),
        event({"tool_calls": [rest]}, "tool_calls"),
        b"data: [DONE]\n\n",
    ]
    return httpx.Response(
        200, stream=ChunkStream(chunks), headers={"content-type": "text/event-stream"}
    )


def test_a_streamed_tool_call_becomes_function_call_events(env: Env) -> None:
    env.engine.custom = streamed_tool_call
    events = list(
        sdk(env).responses.create(model=MODEL, input="Weather?", tools=[WEATHER], stream=True)
    )
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    (call,) = events[-1].response.output  # type: ignore[union-attr]
    assert (call.call_id, call.arguments) == ("call_9", '{"city": "Oslo"}')  # type: ignore[union-attr]


def test_the_captured_row_names_the_adapter_version_and_feedback_reaches_datasets(
    env: Env, tmp_path: Path
) -> None:
    version = str(upload(env, tmp_path, 1)["id"])
    promote(env, version, alias="support")
    env.engine.reply = "Eight legs, as every spider has."
    raw = env.client.post(
        "/v1/responses",
        json={"model": "support", "input": "How many legs does a spider have?", "user": "u-1"},
        headers=env.auth(),
    )
    assert raw.status_code == 200, raw.text
    assert raw.headers["x-loopgate-adapter-version"] == version
    completion = raw.json()["loopgate"]["completion_id"]
    store = env.client.app.state.gateway.store
    tenant = env.client.blocking_portal.call(store.get_tenant, "acme")
    row = env.client.blocking_portal.call(store.get_completion, tenant.id, completion)
    assert row is not None and row.adapter_version == version and row.kind == "chat"
    rated = env.client.post(
        f"/v1/chat/completions/{completion}/feedback",
        json={"rating": "up", "user": "u-1"},
        headers=env.auth(),
    )
    assert rated.status_code == 201, rated.text
    _, lines = build(env)
    (line,) = lines[completion]
    assert line.data["messages"] == [
        {"role": "user", "content": "How many legs does a spider have?"},
        {"role": "assistant", "content": "Eight legs, as every spider has."},
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"role": "user"}]}, "input[0].content"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_what_is_not_served_is_a_400_naming_the_field(
    env: Env, body: dict[str, object], param: str
) -> None:
    resp = env.client.post(
        "/v1/responses", json={"model": MODEL, "input": "hi", **body}, headers=env.auth()
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert env.engine.requests == []


# --- the store, on both backends ----------------------------------------------------------------


def stored(rid: str, tenant: str, previous: str | None = None, **kw: Any) -> StoredResponse:
    fields: dict[str, Any] = {
        "id": rid,
        "tenant_id": tenant,
        "completion_id": None,
        "previous_response_id": previous,
        "model": MODEL,
        "stored": True,
        "status": "completed",
        "request": "{}",
        "input_items": f'["{rid} in"]',
        "output": f'["{rid} out"]',
        "input_tokens": 3,
        "output_tokens": 4,
        "end_user": None,
        "created_at": time.time(),
    }
    return StoredResponse(**{**fields, **kw})


def completion(cid: str, tenant: str) -> Completion:
    return Completion(
        id=cid,
        tenant_id=tenant,
        key_id="k",
        kind="chat",
        alias=MODEL,
        adapter_version=None,
        backend="b",
        stored=True,
        request="{}",
        response="x",
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        latency_ms=1.0,
        ttft_ms=None,
        status="complete",
        error=None,
        end_user=None,
        metadata={},
        do_not_train=False,
        request_id=None,
        created_at=time.time(),
        completed_at=time.time(),
    )


async def test_store_keeps_chains_per_tenant_and_deletes_with_the_completion(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        for t in ("t1", "t2"):
            await store.create_tenant(t, t)
            await store.add_key(ApiKey(f"k-{t}", t, "k", "h", time.time()))
        await store.capture_batch([completion("chatcmpl-a", "t1")], [])
        await store.add_response(stored("resp_a", "t1", completion_id="chatcmpl-a"))
        # A link to another tenant's completion is not taken.
        await store.add_response(stored("resp_b", "t1", "resp_a", completion_id="chatcmpl-zz"))
        await store.add_response(stored("resp_c", "t1", "resp_b"))
        await store.add_response(stored("resp_x", "t2", "resp_c"))  # names t1's: not followed
        got = await store.get_response("t1", "resp_a")
        assert got is not None and got.completion_id == "chatcmpl-a" and got.stored
        assert (got.input_tokens, got.output_tokens) == (3, 4)
        b = await store.get_response("t1", "resp_b")
        assert b is not None and b.completion_id is None
        assert await store.get_response("t2", "resp_a") is None
        chain = await store.response_chain("t1", "resp_c", 100)
        assert [r.id for r in chain] == ["resp_a", "resp_b", "resp_c"]
        assert [r.id for r in await store.response_chain("t1", "resp_c", 2)] == ["resp_b", "resp_c"]
        assert [r.id for r in await store.response_chain("t2", "resp_x", 100)] == ["resp_x"]
        assert await store.response_chain("t2", "resp_c", 100) == []
        assert not await store.delete_response("t2", "resp_a")
        assert await store.delete_response("t1", "resp_a")
        assert await store.get_completion("t1", "chatcmpl-a") is None
        assert [r.id for r in await store.response_chain("t1", "resp_c", 100)] == [
            "resp_b",
            "resp_c",
        ]
        # Deleting the captured completion deletes its response (retention, erasure, owner).
        await store.capture_batch([completion("chatcmpl-d", "t1")], [])
        await store.add_response(stored("resp_d", "t1", completion_id="chatcmpl-d"))
        assert await store.delete_completion("t1", "chatcmpl-d")
        assert await store.get_response("t1", "resp_d") is None
        await store.add_response(stored("resp_e", "t1", stored=False, input_items=None))
        unstored = await store.get_response("t1", "resp_e")
        assert unstored is not None and not unstored.stored and unstored.input_items is None
    finally:
        await store.close()


def test_an_engine_failure_mid_stream_ends_it_with_response_failed(env: Env) -> None:
    env.engine.mode = "break"  # two chunks, then the connection drops
    client = sdk(env)
    events = list(client.responses.create(model=MODEL, input="Capital?", stream=True))
    assert [e.type for e in events][-3:] == [
        "response.output_text.delta",
        "response.output_text.delta",
        "response.failed",
    ]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    assert client.responses.retrieve(failed.id).status == "failed"
