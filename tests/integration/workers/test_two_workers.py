"""`loopgate serve --workers 2` as real processes against the mock engine: requests land on
both workers, a burst of connections is spread over them, a concurrency limit holds across
them, admin calls on the follower take effect, a killed worker is replaced, SIGTERM drains and
exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ADMIN_KEY, Stack, add_tenants, start_gateway, stop_gateway
from tests.support.mock_engine import mock_engine
from tests.support.polling import until_sync

WORKER = "x-loopgate-worker"
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with mock_engine(chunks=40, delay_ms=50) as engine:  # a stream lasts about 2 s
        env = {
            "LOOPGATE_ENGINE_MODE": "external",
            "LOOPGATE_ENGINE_URLS": engine.url,
            "LOOPGATE_SERVED_MODEL_NAME": "mock",
            "LOOPGATE_LOG_LEVEL": "warning",
            "LOOPGATE_WORKERS": "2",
            "LOOPGATE_EVALS_WORKER": "false",
        }
        s = start_gateway(tmp_path, env)
        ENGINES[s.url] = engine.url
        try:
            add_tenants(s, "acme")
            yield s
        finally:
            if s.proc.poll() is None:
                stop_gateway(s)


def workers_of(pid: int) -> set[int]:
    args = ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)]
    out = subprocess.run(args, check=False, capture_output=True)
    lines = out.stdout.decode().splitlines()
    return {int(line.split()[0]) for line in lines if "spawn_main" in line}


async def answered_by(stack: Stack, count: int) -> list[str]:
    """`count` simultaneous streams, each on its own connection: which worker answered each."""
    headers = {"Authorization": f"Bearer {stack.keys['acme']}"}

    async def one() -> str:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
            r = await client.post("/v1/chat/completions", json=BODY, headers=headers)
            assert r.status_code == 200, r.text
            assert r.text.rstrip().endswith("data: [DONE]")
            return r.headers[WORKER]

    return await asyncio.gather(*(one() for _ in range(count)))


def both_answer(stack: Stack) -> None:
    seen: set[str] = set()

    def check() -> bool:
        seen.update(asyncio.run(answered_by(stack, 8)))
        return seen == {"0", "1"}

    until_sync(check, f"both workers answer (seen {seen})", timeout_s=60)


def on_worker(stack: Stack, worker: str, method: str, path: str, **kw: object) -> httpx.Response:
    """Send (each time on a new connection) until the request lands on `worker`."""
    for _ in range(200):
        r = httpx.request(method, stack.url + path, timeout=30, **kw)  # type: ignore[arg-type]
        if r.headers.get(WORKER) == worker:
            return r
    pytest.fail(f"no request landed on worker {worker}")


def test_requests_land_on_both_workers(stack: Stack) -> None:
    both_answer(stack)


def test_a_burst_of_connections_is_spread_over_the_workers(stack: Stack) -> None:
    # One socket per worker (SO_REUSEPORT): on one shared socket the worker that woke first
    # accepted every connection of a burst (as a load generator or a client pool opens them),
    # and the other sat idle.
    busy = threading.Thread(target=lambda: asyncio.run(answered_by(stack, 16)))
    busy.start()  # the burst comes while both workers relay streams, as under load
    sent = _engine_requests(stack)
    until_sync(lambda: _engine_requests(stack) >= sent + 16, "16 streams in flight", timeout_s=20)
    answers = burst_of_connections(stack, 128)
    busy.join(timeout=60)
    counts = {worker: answers.count(worker) for worker in ("0", "1")}
    assert sum(counts.values()) == 128, answers
    assert min(counts.values()) >= 40, counts  # binomial(128, 1/2): below 40 once in ~10^5 runs


def burst_of_connections(stack: Stack, count: int) -> list[str]:
    """Open `count` connections at once (non-blocking connects), then ask each which worker
    holds it (`GET /health`, `x-loopgate-worker`)."""
    host, port = stack.url.removeprefix("http://").split(":")
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.setblocking(False)
            sock.connect_ex((host, int(port)))
        answers = []
        for sock in socks:
            sock.setblocking(True)
            sock.settimeout(30)
            sock.sendall(f"GET /health HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                part = sock.recv(65536)
                assert part, f"connection closed after {head!r}"
                head += part
            lines = head.split(b"\r\n\r\n")[0].decode().lower().splitlines()
            assert lines[0].startswith("http/1.1 200"), lines
            answers += [line.split(":", 1)[1].strip() for line in lines if line.startswith(WORKER)]
        return answers
    finally:
        for sock in socks:
            sock.close()


def test_max_concurrent_holds_across_workers(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    put = on_worker(
        stack, "1", "PUT", "/admin/tenants/acme/limits", json={"max_concurrent": 1}, headers=admin
    )
    assert put.status_code == 200, put.text  # an admin call on the follower, done by the primary
    headers = {"Authorization": f"Bearer {stack.keys['acme']}"}
    with (
        httpx.Client(base_url=stack.url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=BODY, headers=headers) as first,
    ):
        assert first.status_code == 200
        other = "1" if first.headers[WORKER] == "0" else "0"
        second = on_worker(stack, other, "POST", "/v1/chat/completions", json=BODY, headers=headers)
        assert second.status_code == 429, second.text
        assert "Too many concurrent requests" in second.json()["error"]["message"]
        assert b"".join(first.iter_bytes()).rstrip().endswith(b"data: [DONE]")
    assert asyncio.run(answered_by(stack, 1))  # the slot was given back


def test_an_admin_call_on_the_follower_takes_effect(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for n in range(200):  # a new tenant each try: a try that lands on the primary creates one too
        name = f"initech-{n}"
        made = httpx.post(
            stack.url + "/admin/tenants", json={"name": name}, headers=admin, timeout=30
        )
        assert made.status_code in (200, 201), made.text
        if made.headers.get(WORKER) == "1":
            break
    else:
        pytest.fail("no request landed on worker 1")
    listed = on_worker(stack, "0", "GET", "/admin/tenants", headers=admin).json()
    assert name in str(listed)
    denied = on_worker(stack, "1", "GET", "/admin/tenants", headers={"Authorization": "Bearer x"})
    assert denied.status_code == 403


def test_a_killed_worker_is_replaced(stack: Stack) -> None:
    before = workers_of(stack.proc.pid)
    assert len(before) == 2
    victim = max(before)
    os.kill(victim, signal.SIGKILL)
    until_sync(lambda: len(workers_of(stack.proc.pid) - before) == 1, "a new worker", timeout_s=30)
    both_answer(stack)


def test_sigterm_drains_every_worker_and_exits_0(stack: Stack) -> None:
    both_answer(stack)
    sent = _engine_requests(stack)
    results: list[str] = []
    thread = threading.Thread(target=lambda: results.extend(asyncio.run(answered_by(stack, 6))))
    thread.start()
    until_sync(lambda: _engine_requests(stack) >= sent + 6, "six streams in flight", timeout_s=20)
    stack.proc.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert len(results) == 6  # every stream finished whole ([DONE] checked in answered_by)
    assert stack.proc.wait(timeout=90) == 0, stack.log_tail()
    assert workers_of(stack.proc.pid) == set()


def _engine_requests(stack: Stack) -> int:
    return int(httpx.get(ENGINES[stack.url] + "/stats").json()["requests"])


ENGINES: dict[str, str] = {}  # gateway URL -> its mock engine's URL
