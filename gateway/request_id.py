"""Request ids: the client's X-Request-Id when sane, else a new one; echoed on every response."""

from __future__ import annotations

import re
import secrets

from litestar.types import Message, Scope

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
