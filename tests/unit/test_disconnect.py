"""A client that leaves mid-stream makes the gateway close the upstream request (real sockets:
a uvicorn-served gateway in front of a slow aiohttp SSE upstream)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import uvicorn
from aiohttp import web

from gateway.app import create_app
from replicas.supervisor import free_port
from tests.unit.conftest import ADMIN, make_settings


class SlowUpstream:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.closed_early = asyncio.Event()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        self.started.set()
        try:
            for _ in range(200):  # 10 s of tokens unless the client goes away
                await resp.write(b'data: {"model":"smollm2-135m-instruct","choices":[]}\n\n')
                await asyncio.sleep(0.05)
        except (ConnectionResetError, asyncio.CancelledError):
            self.closed_early.set()
            raise
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")


async def test_client_disconnect_closes_the_upstream_request(tmp_path: Path) -> None:
    upstream = SlowUpstream()
    web_app = web.Application(handler_args={"handler_cancellation": True})
    web_app.router.add_post("/v1/chat/completions", upstream.chat)
    web_app.router.add_get("/health", upstream.health)
    runner = web.AppRunner(web_app, handler_cancellation=True)
    await runner.setup()
    up_port, gw_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", up_port).start()
    settings = make_settings(tmp_path, engine_urls=(f"http://127.0.0.1:{up_port}",))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=gw_port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{gw_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
            key = (await client.post("/admin/tenants/acme/keys", headers=ADMIN)).json()["key"]
            body = {
                "model": "smollm2",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            }
            headers = {"Authorization": f"Bearer {key}"}
            async with client.stream(
                "POST", "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                assert resp.status_code == 200
                async for _ in resp.aiter_raw():
                    break
        await asyncio.wait_for(upstream.closed_early.wait(), timeout=5)
    finally:
        server.should_exit = True
        await serving
        await runner.cleanup()
