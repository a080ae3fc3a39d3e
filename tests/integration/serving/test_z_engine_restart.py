"""Runs last: the engine dies mid-stream; the client gets an error event, the gateway stays up,
the supervisor brings the engine back, and later requests succeed."""

from __future__ import annotations

import os
import signal

import httpx
import openai
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.engine


def test_engine_killed_during_a_stream(stack: Stack) -> None:
    old_pid = int(stack.engine()["pid"])
    stream = stack.client().chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=1500,
        extra_body={"min_tokens": 1500},
        stream=True,
    )
    received = 0
    with pytest.raises(openai.APIError) as failure:
        for _ in stream:
            received += 1
            if received == 3:
                os.kill(old_pid, signal.SIGKILL)
    assert received >= 3
    assert "engine" in str(failure.value.message).lower()
    # The cut stream is captured as incomplete, with the text that was streamed.
    latest = httpx.get(
        stack.api + "/chat/completions",
        params={"order": "desc", "limit": 1},
        headers={"Authorization": f"Bearer {stack.keys['acme']}"},
    ).json()["data"][0]
    assert latest["loopgate"]["status"] == "incomplete"
    assert latest["choices"][0]["message"]["content"]

    assert httpx.get(stack.url + "/health").status_code == 200  # the gateway is still up
    # While the engine is down requests fail cleanly (503 once the supervisor has seen the
    # death, which a pidfd makes immediate; 502/504 in the instant before), never a 500.
    try:
        stack.client().chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    except openai.APIStatusError as exc:
        assert exc.status_code in (502, 503, 504)
        assert exc.body is not None
    stack.wait_ready(timeout_s=600)
    assert int(stack.engine()["pid"]) != old_pid
    resp = stack.client().chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=16,
    )
    assert "Paris" in (resp.choices[0].message.content or "")
