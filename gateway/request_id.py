"""Request ids: the client's X-Request-Id when sane, else a new one; echoed on every response."""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Ids are logged, stored, traced and echoed; a loopgate key (lg-...) sent as one is not adopted.
_KEY_PREFIX = "lg-"

# The id of the request being served in this context (read by the JSON log formatter).
current_request_id: ContextVar[str | None] = ContextVar("loopgate_request_id", default=None)


def request_id(scope: Scope) -> str:
    """The request's id: the client's X-Request-Id when sane, else a new one."""
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        incoming = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"")
        text = incoming.decode("latin-1")
        sane = _CLIENT_ID_RE.fullmatch(text) and not text.startswith(_KEY_PREFIX)
        rid = text if sane else "req_" + secrets.token_hex(12)
        state["request_id"] = rid
    return str(rid)


async def add_request_id(message: Message, scope: Scope) -> None:
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        headers.append((REQUEST_ID_HEADER.encode(), request_id(scope).encode()))
        message["headers"] = headers


def request_context(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: the request's id is assigned on arrival and current while it is served."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        token = current_request_id.set(request_id(scope))
        try:
            await app(scope, receive, send)
        finally:
            current_request_id.reset(token)

    return middleware
