"""A behavioural stand-in for vLLM's OpenAI server (aiohttp), for capture and shutdown tests:
names completions after X-Request-Id like vLLM, streams N chunks with a delay between them."""

from __future__ import annotations

import argparse
import asyncio
import json

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


def make_app(chunks: int, delay_s: float) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        cid = "chatcmpl-" + request.headers.get("X-Request-Id", "mock")
        model = body["model"]
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
        for i in range(chunks):
            await resp.write(_chunk(cid, model, "tok ", "stop" if i == chunks - 1 else None))
            await asyncio.sleep(delay_s)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mock", "parent": None}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--delay-ms", type=float, default=0.0)
    args = p.parse_args()
    web.run_app(
        make_app(args.chunks, args.delay_ms / 1000),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
