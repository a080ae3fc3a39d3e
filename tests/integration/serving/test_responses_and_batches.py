"""The Responses API and the Batch API through the gateway against the real engine, with the
official openai SDK: a response, its stream, a continued conversation; a batch that answers
every line while live requests keep their time to first token (the engine schedules batch
lines at a lower priority)."""

from __future__ import annotations

import io
import json
import statistics
import time

import openai
import pytest

from tests.integration.conftest import Stack
from tests.support.polling import until_sync

pytestmark = pytest.mark.engine


def test_a_response_its_stream_and_a_continued_conversation(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(
        model="smollm2",
        input="What is the capital of France?",
        instructions="Answer in one short sentence.",
        temperature=0,
        max_output_tokens=24,
    )
    assert first.status == "completed" and "Paris" in first.output_text
    assert first.usage is not None and first.usage.output_tokens > 0
    events = list(
        client.responses.create(
            model="smollm2", input="Name a colour.", temperature=0, max_output_tokens=8, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text  # type: ignore[union-attr]
    follow = client.responses.create(
        model="smollm2",
        previous_response_id=first.id,
        input="And of Italy?",
        temperature=0,
        max_output_tokens=24,
    )
    assert follow.previous_response_id == first.id
    items = client.responses.input_items.list(follow.id)
    assert [i.role for i in items.data if i.type == "message"] == ["user"]  # type: ignore[union-attr]
    assert client.responses.retrieve(first.id).output_text == first.output_text
    other = stack.client("globex")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    client.responses.delete(follow.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(follow.id)


def ttft(stack: Stack, n: int) -> list[float]:
    client = stack.client()
    times = []
    for i in range(n):
        started = time.monotonic()
        stream = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": f"Say hello number {i}."}],
            max_tokens=4,
            stream=True,
        )
        for _ in stream:
            times.append(time.monotonic() - started)
            break
        stream.close()
    return times


def test_a_batch_answers_every_line_while_live_requests_keep_their_first_token(
    stack: Stack,
) -> None:
    client = stack.client()
    quiet = ttft(stack, 6)
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "smollm2",
                "messages": [{"role": "user", "content": f"Write a long story number {i}."}],
                "max_tokens": 96,
            },
        }
        for i in range(24)
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    upload = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    until_sync(
        lambda: client.batches.retrieve(batch.id).status == "in_progress",
        "the batch never started",
        timeout_s=300,
    )
    busy = ttft(stack, 6)
    until_sync(
        lambda: client.batches.retrieve(batch.id).status in ("completed", "failed"),
        "the batch never finished",
        timeout_s=900,
    )
    final = client.batches.retrieve(batch.id)
    assert final.status == "completed", final
    assert final.request_counts is not None and final.request_counts.completed == len(lines)
    out = client.files.content(final.output_file_id or "").text.splitlines()
    answered = {json.loads(line)["custom_id"] for line in out}
    assert answered == {line["custom_id"] for line in lines}
    print(
        f"\nlive TTFT p50: quiet {statistics.median(quiet) * 1000:.0f} ms, "
        f"while the batch ran {statistics.median(busy) * 1000:.0f} ms "
        f"(max {max(busy) * 1000:.0f} ms)"
    )
