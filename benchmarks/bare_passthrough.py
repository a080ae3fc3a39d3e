"""The floor for the client benchmark: a bare Litestar app that relays chat completions upstream.

No auth, no validation, no model renaming: it only reads `stream` to choose the relay style.
The upstream client uses the same pool limits as loopgate so that only the transport differs.
Run: python -m benchmarks.bare_passthrough --port N --upstream http://127.0.0.1:M
     [--transport httpx|aiohttp]   (or env BENCH_TRANSPORT)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator

import httpx
import msgspec
import uvicorn
from httpx_aiohttp import AiohttpTransport
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Stream

TRANSPORTS = ("httpx", "aiohttp")
_HEADERS = {"content-type": "application/json"}


class _Flags(msgspec.Struct):
    stream: bool = False


_DECODE = msgspec.json.Decoder(_Flags)


def make_client(transport: str) -> httpx.AsyncClient:
    timeout = httpx.Timeout(30.0)
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    if transport == "aiohttp":
        return httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits, trust_env=False),
            timeout=timeout,
            trust_env=False,
        )
    return httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False)


async def _relay(resp: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for raw in resp.aiter_raw():
            yield raw
    finally:
        await resp.aclose()


def create_app(upstream: str, transport: str) -> Litestar:
    url = upstream.rstrip("/") + "/v1/chat/completions"
    client = make_client(transport)

    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request[object, object, State]) -> Response[bytes] | Stream:
        body = await request.body()
        if _DECODE.decode(body).stream:
            req = client.build_request("POST", url, content=body, headers=_HEADERS)
            resp = await client.send(req, stream=True)
            return Stream(_relay(resp), media_type="text/event-stream")
        resp = await client.post(url, content=body, headers=_HEADERS)
        return Response(resp.content, status_code=resp.status_code, media_type="application/json")

    @get("/health", sync_to_thread=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    async def close_client() -> None:
        await client.aclose()

    return Litestar(
        route_handlers=[chat, health], on_shutdown=[close_client], openapi_config=None, debug=False
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bare_passthrough", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. the mock")
    p.add_argument(
        "--transport", choices=TRANSPORTS, default=os.environ.get("BENCH_TRANSPORT", "httpx")
    )
    args = p.parse_args(argv)
    uvicorn.run(
        create_app(args.upstream, args.transport),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
