"""A stream's two ways out of a real `loopgate serve` (the mock engine sends 16 chunks 5 ms
apart, so each is relayed on its own): a chat stream's blocks are written straight to the
client's connection (gateway.relay.DirectBody) and arrive whole and in order; a Responses API
stream, which translates the same relay's blocks, gets only its own events (the relay must not
write the chat chunks it is reading for the translator to the client)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import (
    Stack,
    add_tenants,
    mock_engine_env,
    start_gateway,
    stop_gateway,
)
from tests.support.mock_engine import mock_engine

CHUNKS = 16


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with mock_engine(chunks=CHUNKS, delay_ms=5) as engine:
        s = start_gateway(tmp_path_factory.mktemp("relay-paths"), mock_engine_env(engine.url))
        try:
            add_tenants(s, "acme")
            yield s
        finally:
            stop_gateway(s)


def post(stack: Stack, path: str, body: dict[str, object]) -> str:
    headers = {"Authorization": f"Bearer {stack.keys['acme']}"}
    r = httpx.post(stack.url + path, json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.text


def data_events(text: str) -> list[dict[str, object]]:
    return [
        json.loads(line[6:])
        for line in text.split("\n")
        if line.startswith("data: {")  # [DONE] aside
    ]


def test_a_chat_stream_arrives_whole_and_in_order(stack: Stack) -> None:
    text = post(
        stack,
        "/v1/chat/completions",
        {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    events = data_events(text)
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == "smollm2" for e in events)
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)  # type: ignore[index]
    assert content == "tok " * CHUNKS
    assert text.rstrip().endswith("data: [DONE]")


def test_a_responses_stream_gets_only_its_own_events(stack: Stack) -> None:
    text = post(stack, "/v1/responses", {"model": "smollm2", "input": "hi", "stream": True})
    assert "chat.completion.chunk" not in text
    events = data_events(text)
    assert all(isinstance(e.get("type"), str) for e in events)
    deltas = "".join(str(e["delta"]) for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "tok " * CHUNKS
    assert events[-1]["type"] == "response.completed"
    output: list[dict[str, object]] = events[-1]["response"]["output"]  # type: ignore[index]
    messages = [item for item in output if item["type"] == "message"]
    texts = [part["text"] for item in messages for part in item["content"]]  # type: ignore[attr-defined]
    assert "".join(texts) == "tok " * CHUNKS
