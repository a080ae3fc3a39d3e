"""A behavioural stand-in for vLLM's OpenAI server (aiohttp), for capture, shutdown and fault
tests: names completions after X-Request-Id like vLLM, streams N chunks with a delay between them
(after an optional first-token delay), and reports at `GET /stats` how many requests it got and
when it saw clients go away mid-stream. `MockEngine` runs it as a real process that tests can
kill and restart on the same port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
from aiohttp import web


def _chunk(cid: str, model: str, text: str, finish: str | None = None) -> bytes:
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def make_app(chunks: int, delay_s: float, first_delay_s: float = 0.0) -> web.Application:
    stats: dict[str, object] = {"requests": 0, "aborted_at": []}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stats["requests"] = int(stats["requests"]) + 1  # type: ignore[call-overload]
        cid = "chatcmpl-" + request.headers.get("X-Request-Id", "mock")
        model = body["model"]
        await asyncio.sleep(first_delay_s)
        if not body.get("stream"):
            await asyncio.sleep(delay_s)
            usage = {"prompt_tokens": 3, "completion_tokens": chunks, "total_tokens": 3 + chunks}
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "tok " * chunks},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(chunks):
                await resp.write(_chunk(cid, model, "tok ", "stop" if i == chunks - 1 else None))
                await asyncio.sleep(delay_s)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionError, asyncio.CancelledError) as exc:
            aborted: list[float] = stats["aborted_at"]  # type: ignore[assignment]
            aborted.append(time.time())  # the gateway closed the request: vLLM would abort it
            if isinstance(exc, asyncio.CancelledError):
                raise
        return resp

    async def report(_: web.Request) -> web.Response:
        return web.json_response(stats)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mock", "parent": None}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", report)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--first-delay-ms", type=float, default=0.0)
    args = p.parse_args()
    web.run_app(
        make_app(args.chunks, args.delay_ms / 1000, args.first_delay_ms / 1000),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
    )


class MockEngine:
    """The mock as a real process on a fixed port: start, kill -9, start again."""

    def __init__(self, port: int, chunks: int, delay_ms: float, first_delay_ms: float = 0.0):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.args = [
            sys.executable,
            "-m",
            "tests.support.mock_engine",
            *("--port", str(port), "--chunks", str(chunks), "--delay-ms", str(delay_ms)),
            *("--first-delay-ms", str(first_delay_ms)),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health").status_code == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mock engine on port {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stats(self) -> dict[str, object]:
        return dict(httpx.get(self.url + "/stats").json())


@contextlib.contextmanager
def mock_engine(
    chunks: int, delay_ms: float, first_delay_ms: float = 0.0, port: int | None = None
) -> Iterator[MockEngine]:
    from replicas.supervisor import free_port

    engine = MockEngine(port or free_port(), chunks, delay_ms, first_delay_ms)
    engine.start()
    try:
        yield engine
    finally:
        engine.kill()


if __name__ == "__main__":
    main()
