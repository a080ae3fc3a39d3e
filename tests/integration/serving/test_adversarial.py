"""One tenant cannot stall another: pathological bodies are refused or absorbed while another
tenant's stream keeps flowing (real gateway, real engine). The stream's inter-chunk gaps during
the attack are printed (a measurement, not an assertion)."""

from __future__ import annotations

import json
import statistics
import threading
import time

import httpx
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.engine

# ~4 MB of text that made the key=value secret scanner rescan 1 KB per candidate.
PATHOLOGICAL = "token=a(" * (4_000_000 // 8 - 1024)


def stream_gaps(stack: Stack, started: threading.Event) -> tuple[list[float], str]:
    """acme's stream: the gaps between its chunks (seconds) and how it ended."""
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "max_tokens": 160,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {stack.keys['acme']}"}
    gaps, last, ended = [], 0.0, "no [DONE]"
    with httpx.stream("POST", stack.api + "/chat/completions", json=body, headers=headers,
                      timeout=600) as resp:  # fmt: skip
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            now = time.monotonic()
            if last:
                gaps.append(now - last)
            else:
                started.set()  # the first chunk is out: start the attack
            last = now
            if line == "data: [DONE]":
                ended = "done"
    return gaps, ended


def attack(stack: Stack, outcomes: list[str]) -> None:
    headers = {"Authorization": f"Bearer {stack.keys['globex']}"}
    bodies = [
        {"model": "smollm2", "messages": [{"role": "user", "content": PATHOLOGICAL}]},
        {"model": "smollm2", "prompt": ["a"] * 100_000, "max_tokens": 1},
        {"model": "smollm2", "prompt": ["a", "b"] * 4, "n": 16, "max_tokens": 1},
    ]
    paths = ["/chat/completions", "/completions", "/completions"]
    with httpx.Client(timeout=600) as client:
        for body, path in zip(bodies, paths, strict=True):
            raw = json.dumps(body).encode()
            started = time.monotonic()
            resp = client.post(stack.api + path, content=raw, headers=headers)
            error = resp.json().get("error", {}) if resp.status_code >= 400 else {}
            outcomes.append(
                f"{len(raw) / 1e6:.1f} MB {path}: {resp.status_code} "
                f"{error.get('message', '')[:90]!r} in {time.monotonic() - started:.2f} s"
            )


def test_pathological_bodies_do_not_stall_another_tenant_s_stream(stack: Stack) -> None:
    quiet, _ = stream_gaps(stack, threading.Event())  # the same stream with nobody attacking
    outcomes: list[str] = []
    first_chunk = threading.Event()
    attacker = threading.Thread(target=lambda: (first_chunk.wait(60), attack(stack, outcomes)))
    attacker.start()
    gaps, ended = stream_gaps(stack, first_chunk)
    attacker.join(timeout=600)
    for line in outcomes:
        print("attack:", line)
    for name, g in (("quiet", quiet), ("under attack", gaps)):
        p50, p99 = statistics.median(g) * 1000, sorted(g)[int(len(g) * 0.99)] * 1000
        print(f"acme's stream {name}: {len(g)} gaps, p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
              f"max {max(g) * 1000:.0f} ms")  # fmt: skip
    assert ended == "done"  # the stream finished whole
    assert len(outcomes) == 3
    assert all(" 500 " not in o and " 502 " not in o for o in outcomes), outcomes
    assert " 400 " in outcomes[1] and "prompt" in outcomes[1]  # 100k prompts: refused at once
    assert " 400 " in outcomes[2] and "sequences" in outcomes[2]  # 8 prompts x n=16 > 64
