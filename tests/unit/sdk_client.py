"""The official openai SDK pointed at a test app: its HTTP (httpx2 in openai 3.x) is handed to
the Litestar test client, so SDK calls run the real app in-process."""

from __future__ import annotations

import httpx2
import openai

from tests.unit.conftest import Env


def sdk(env: Env, key: str | None = None) -> openai.OpenAI:
    """A client of `key` (acme's by default) on the env's app."""

    def forward(request: httpx2.Request) -> httpx2.Response:
        resp = env.client.request(
            request.method,
            str(request.url.copy_with(scheme="http", host="testserver.local")),
            content=request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )
        return httpx2.Response(resp.status_code, headers=resp.headers.items(), content=resp.content)

    return openai.OpenAI(
        base_url="http://testserver.local/v1",
        api_key=key or env.acme_key,
        http_client=httpx2.Client(transport=httpx2.MockTransport(forward)),
        max_retries=0,
    )
