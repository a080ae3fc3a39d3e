"""The app factory: `create_app(settings)` wires the routes to one `Gateway` and its lifespan."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.types import Message, Scope

from gateway import api
from gateway.admin_adapters import AdapterController, backends
from gateway.admin_api import AdminController
from gateway.errors import EXCEPTION_HANDLERS
from gateway.runtime import Gateway
from gateway.settings import Settings

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(scope: Scope) -> str:
    """The request's id: the client's X-Request-Id when sane, else a new one."""
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        incoming = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"")
        text = incoming.decode("latin-1")
        rid = text if _CLIENT_ID_RE.match(text) else "req_" + secrets.token_hex(12)
        state["request_id"] = rid
    return str(rid)


async def add_request_id(message: Message, scope: Scope) -> None:
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        headers.append((REQUEST_ID_HEADER.encode(), request_id(scope).encode()))
        message["headers"] = headers


def create_app(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> Litestar:
    gateway = Gateway(settings, transport)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    return Litestar(
        route_handlers=[
            api.chat_completions,
            api.completions,
            api.list_models,
            api.retrieve_model,
            api.health,
            api.ready,
            AdminController,
            AdapterController,
            backends,
        ],
        dependencies={"gw": Provide(lambda: gateway, sync_to_thread=False, use_cache=True)},
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        before_send=[add_request_id],
        state=State({"gateway": gateway}),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=None,
        debug=False,
    )
