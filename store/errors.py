"""The error tree, and the one renderer that turns any failure into an OpenAI-shaped body.

    LoopgateError                 (status, OpenAI `type`, `code`)
    ├── InvalidRequest            400 invalid_request_error
    ├── AuthenticationFailed      401 authentication_error   (missing / wrong / revoked key)
    ├── PermissionDenied          403 permission_error       (tenant key on the admin API)
    ├── NotFound                  404 not_found_error        (also: model not visible to caller)
    ├── Conflict                  409 conflict_error
    ├── PayloadTooLarge           413 invalid_request_error
    ├── Unprocessable             422 invalid_request_error
    ├── RateLimited               429 rate_limit_error
    ├── QuotaExceeded             429 rate_limit_error       (code quota_exceeded; no retry)
    ├── UpstreamUnavailable       502 upstream_error         (connection refused / reset)
    ├── EngineError               vLLM's own status + body, passed through once (5xx → 502)
    ├── EngineNotReady            503 service_unavailable
    ├── StoreBusy                 503 service_unavailable    (SQLite still locked after its wait)
    └── UpstreamTimeout           504 timeout_error

Errors from vLLM itself (its own 4xx bodies) are passed through once by `upstream`, never
wrapped a second time.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import ClassVar

import msgspec
from litestar import Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException, ValidationException

log = logging.getLogger("loopgate.errors")


class ErrorBody(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class LoopgateError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> ErrorEnvelope:
        return ErrorEnvelope(ErrorBody(self.message, self.type, self.param, self.code))

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(LoopgateError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(LoopgateError):
    status = 401
    type = "authentication_error"

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": "Bearer"}


class PermissionDenied(LoopgateError):
    status = 403
    type = "permission_error"


class NotFound(LoopgateError):
    status = 404
    type = "not_found_error"


class Conflict(LoopgateError):
    status = 409
    type = "conflict_error"


class PayloadTooLarge(LoopgateError):
    status = 413
    type = "invalid_request_error"


class Unprocessable(LoopgateError):
    status = 422
    type = "invalid_request_error"


class RateLimited(LoopgateError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, round(self.retry_after_s)))}


class QuotaExceeded(LoopgateError):
    """A tenant quota (files, datasets, queued jobs, jobs or eval runs per day) is used up;
    `param` names the quota. Retrying soon does not help, so the official SDKs are told not to
    (they retry other 429s on their own)."""

    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, param: str):
        super().__init__(message, param=param, code="quota_exceeded")

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "false"}


class UpstreamUnavailable(LoopgateError):
    status = 502
    type = "upstream_error"


class EngineNotReady(LoopgateError):
    status = 503
    type = "service_unavailable"

    def headers(self) -> dict[str, str]:
        return {"retry-after": "5"}


class StoreBusy(LoopgateError):
    """Another process (a training worker, a second gateway) held the SQLite write lock for
    longer than the store's busy timeout; nothing was written, the client may retry."""

    status = 503
    type = "service_unavailable"

    def headers(self) -> dict[str, str]:
        return {"retry-after": "1"}


class UpstreamTimeout(LoopgateError):
    status = 504
    type = "timeout_error"


class EngineError(LoopgateError):
    """An error answer from vLLM itself: relayed once, with its own status and body."""

    def __init__(self, status: int, content: bytes):
        super().__init__(f"engine answered {status}")
        self.status_code = status
        self.content = content


_LITESTAR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def encode_error(err: LoopgateError) -> bytes:
    return msgspec.json.encode(err.body())


def sse_error_event(err: LoopgateError) -> bytes:
    """The single final event of a stream that failed after its first byte."""
    return b"data: " + encode_error(err) + b"\n\n"


def _response(status: int, envelope: ErrorEnvelope, headers: dict[str, str]) -> Response[bytes]:
    return Response(
        content=msgspec.json.encode(envelope),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def handle_loopgate_error(_: Request[object, object, State], exc: LoopgateError) -> Response[bytes]:
    return _response(exc.status, exc.body(), exc.headers())


def handle_engine_error(
    request: Request[object, object, State], exc: EngineError
) -> Response[bytes]:
    if exc.status_code >= 500:  # an engine crash is a bad gateway, not a 500 of ours
        detail = exc.content.decode(errors="replace")[:500]
        return handle_loopgate_error(
            request, UpstreamUnavailable(f"the inference engine failed: {detail}")
        )
    return Response(exc.content, status_code=exc.status_code, media_type="application/json")


def handle_http_exception(_: Request[object, object, State], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (unknown route, wrong method, body too large) in OpenAI shape."""
    status = exc.status_code
    message = exc.detail or "request failed"
    if isinstance(exc, ValidationException):
        status, message = 400, f"invalid request: {exc.detail}"
    if status == 404:
        message = "no such endpoint"
    kind = _LITESTAR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    headers = exc.headers or {}  # e.g. a 405's Allow, which HTTP requires
    return _response(status, ErrorEnvelope(ErrorBody(message, kind)), headers)


def handle_sqlite_error(
    request: Request[object, object, State], exc: sqlite3.OperationalError
) -> Response[bytes]:
    """A locked SQLite file is a retryable 503, not an internal error; anything else is one."""
    if "locked" not in str(exc) and "busy" not in str(exc):
        return handle_unexpected(request, exc)
    log.warning("store busy on %s %s: %s", request.method, request.url.path, exc)
    err = StoreBusy("the store is busy; nothing was written, retry shortly", code="store_busy")
    return handle_loopgate_error(request, err)


def handle_unexpected(request: Request[object, object, State], exc: Exception) -> Response[bytes]:
    """Last resort: log with the trace, answer without one."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = ErrorEnvelope(ErrorBody("internal error; see the gateway log", "api_error"))
    return _response(500, body, {})


EXCEPTION_HANDLERS = {
    EngineError: handle_engine_error,
    LoopgateError: handle_loopgate_error,
    HTTPException: handle_http_exception,
    sqlite3.OperationalError: handle_sqlite_error,
    Exception: handle_unexpected,
}
