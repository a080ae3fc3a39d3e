"""The gateway in front of a real vLLM-CPU engine, driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def test_chat_non_streaming(stack: Stack) -> None:
    resp = stack.client().chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=24
    )
    assert resp.model == "smollm2"
    assert "Paris" in (resp.choices[0].message.content or "")
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    assert resp.id.startswith("chatcmpl-")


def test_stream_reassembles_to_the_non_streaming_answer(stack: Stack) -> None:
    client = stack.client()
    whole = client.chat.completions.create(
        model="smollm2", messages=STORY, temperature=0, max_tokens=40
    )
    stream = client.chat.completions.create(
        model="smollm2",
        messages=STORY,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage, chunks = [], None, 0
    for chunk in stream:
        chunks += 1
        assert chunk.model == "smollm2"
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert chunks > 5  # relayed chunk by chunk, not buffered into one
    assert "".join(parts) == whole.choices[0].message.content
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_legacy_completions(stack: Stack) -> None:
    resp = stack.client().completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert resp.model == "smollm2"
    assert resp.choices[0].text.strip()
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_max_tokens_is_honoured(stack: Stack) -> None:
    resp = stack.client().chat.completions.create(
        model="smollm2", messages=STORY, temperature=0, max_tokens=3
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 3


def test_stop_is_honoured(stack: Stack) -> None:
    client = stack.client()
    full = client.chat.completions.create(
        model="smollm2", messages=STORY, temperature=0, max_tokens=40
    )
    text = full.choices[0].message.content or ""
    words = re.findall(r"[A-Za-z]{4,}", text)
    assert len(words) >= 4, text
    stop_word = words[3]
    cut = client.chat.completions.create(
        model="smollm2", messages=STORY, temperature=0, max_tokens=40, stop=[stop_word]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop_word)]


def test_models_are_listed_per_tenant(stack: Stack) -> None:
    acme = sorted(m.id for m in stack.client("acme").models.list())
    globex = sorted(m.id for m in stack.client("globex").models.list())
    assert acme == ["smollm2"]
    assert globex == ["globex-support", "smollm2"]
    assert stack.client("globex").models.retrieve("globex-support").owned_by == "globex"


def test_sixteen_concurrent_streams_all_complete(stack: Stack) -> None:
    async def one(i: int) -> tuple[str, str | None]:
        client = stack.aclient()
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": f"Count from {i} to {i + 5}."}],
            max_tokens=16,
            temperature=0,
            stream=True,
        )
        text, reason = [], None
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                reason = chunk.choices[0].finish_reason or reason
        await client.close()
        return "".join(text), reason

    async def all_of_them() -> list[tuple[str, str | None]]:
        return await asyncio.gather(*(one(i) for i in range(16)))

    results = asyncio.run(all_of_them())
    assert len(results) == 16
    assert all(text and reason in ("stop", "length") for text, reason in results), results


def test_missing_and_wrong_keys_are_authentication_errors(stack: Stack) -> None:
    no_header = {"Authorization": openai.Omit()}
    # The SDK insists on a key; the header is then removed from each request.
    missing = openai.OpenAI(base_url=stack.api, api_key="placeholder", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        missing.chat.completions.create(model="smollm2", messages=QUESTION, extra_headers=no_header)
    with pytest.raises(openai.AuthenticationError):
        missing.models.list(extra_headers=no_header)
    for key in ("lg-0000000000000000-" + "A" * 43, "sk-not-ours", stack.keys["acme"] + "x"):
        wrong = openai.OpenAI(base_url=stack.api, api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="smollm2", messages=QUESTION)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


def test_other_tenants_aliases_and_unknown_models_are_not_found(stack: Stack) -> None:
    client = stack.client("acme")
    for model in ("globex-support", "gpt-4o", "smollm2-135m-instruct"):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=model, messages=QUESTION, max_tokens=2)
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(model)
    assert "globex-support" not in {m.id for m in client.models.list()}


def test_invalid_requests_are_400_with_openai_bodies(stack: Stack) -> None:
    client = stack.client()
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="smollm2", messages=[])
    assert empty.value.body is not None
    with pytest.raises(openai.BadRequestError) as negative:
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=-1)
    assert "max_tokens" in str(negative.value)
    resp = httpx.post(
        stack.api + "/chat/completions",
        content=b'{"model": "smollm2", "messages": [',
        headers={
            "Authorization": f"Bearer {stack.keys['acme']}",
            "content-type": "application/json",
        },
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    # An engine-side refusal (prompt too long for the context) comes back as the engine's 400.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=100_000)


def _generated_tokens(stack: Stack) -> float:
    metrics = stack.engine_metrics()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("vllm:generation_tokens_total")
    )


def test_client_disconnect_aborts_the_engine_request(stack: Stack) -> None:
    body = {
        "model": "smollm2",
        "messages": STORY,
        "max_tokens": 1500,
        "min_tokens": 1500,  # minutes of generation on 2 CPU cores, unless aborted
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {stack.keys['acme']}"}
    start = _generated_tokens(stack)
    with httpx.stream(
        "POST", stack.api + "/chat/completions", json=body, headers=headers, timeout=60
    ) as resp:
        assert resp.status_code == 200
        for i, _ in enumerate(resp.iter_raw()):
            if i >= 5:
                break
    assert _generated_tokens(stack) > start  # it was generating
    # Once aborted, the engine's token counter stops moving.
    deadline = time.monotonic() + 30
    previous = _generated_tokens(stack)
    while True:
        time.sleep(2)
        now = _generated_tokens(stack)
        if now == previous:
            break
        assert time.monotonic() < deadline, "the engine kept generating for a client that left"
        previous = now
    assert now - start < 1000


def test_stored_completions_through_the_sdk(stack: Stack) -> None:
    client = stack.client()
    made = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0,
        max_tokens=12,
        store=True,
        metadata={"suite": "sdk", "run": "1"},
    )
    got = client.chat.completions.retrieve(made.id)
    assert got.id == made.id and got.choices[0].message.content == made.choices[0].message.content
    assert got.metadata == {"suite": "sdk", "run": "1"}
    listed = client.chat.completions.list(metadata={"suite": "sdk"}, limit=10)
    assert made.id in [c.id for c in listed.data]
    messages = client.chat.completions.messages.list(made.id)
    assert [m.content for m in messages.data] == [QUESTION[0]["content"]]
    updated = client.chat.completions.update(made.id, metadata={"suite": "sdk", "run": "2"})
    assert updated.metadata == {"suite": "sdk", "run": "2"}
    with pytest.raises(openai.NotFoundError):
        stack.client("globex").chat.completions.retrieve(made.id)
    deleted = client.chat.completions.delete(made.id)
    assert deleted.deleted and deleted.id == made.id
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(made.id)
    private = client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=4, store=False
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(private.id)
