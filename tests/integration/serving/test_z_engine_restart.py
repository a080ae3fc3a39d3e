"""Runs last: the engine dies mid-stream; the client gets an error event, the gateway stays up,
the supervisor brings the engine back, and a request sent while it was down waits and succeeds."""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest

from tests.integration.conftest import Stack
from tests.support.polling import until_sync

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
    # A request sent while the engine is down waits for the supervisor to bring it back
    # (LOOPGATE_ENGINE_READY_WAIT_S) and then succeeds: the restart is seen only as a delay.
    until_sync(  # the supervisor has seen the death (a pidfd makes it immediate)
        lambda: httpx.get(stack.url + "/ready").status_code == 503,
        "/ready never reported the engine down",
        timeout_s=30,
    )
    started = time.monotonic()
    resp = stack.client().chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=16,
    )
    waited = time.monotonic() - started
    assert "Paris" in (resp.choices[0].message.content or "")
    assert int(stack.engine()["pid"]) != old_pid
    print(f"\na request sent during the engine restart waited {waited:.1f}s and succeeded")
