"""The Batch API on the gateway side: checking an input file and queueing a batch, reading and
cancelling batches, and serving one line for the evals worker that runs the batch.

A batch's input is a JSONL file uploaded with purpose `batch`, one request a line:
`{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body": <the request>}`. The
whole file is checked when the batch is created (every body decoded as its endpoint decodes a
live request), and the first bad line is a 400 naming its number. The batch is then a queued
row; an evals worker (`evals.batch_runner`) claims it and sends each line back here, to
`run_line`, which serves it through the tenant's own serving path (aliases, adapters, limits,
capture) at a lower engine priority than live traffic, with `batch_id` in the captured
metadata. Nothing of a batch runs in a client's request.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from evals.batch_lines import BatchLine, LineReply
from gateway.files import Files
from gateway.protocol import Metadata, decode_chat, decode_completion
from gateway.quotas import Quotas, QuotaSet, refusal
from gateway.responses_api import Responder
from gateway.responses_translate import decode_request
from gateway.serving import Kind, Serving
from gateway.tenancy import Caller
from store import BatchRecord, Store, Tenant
from store.errors import (
    Conflict,
    EngineError,
    InvalidRequest,
    LoopgateError,
    NotFound,
    PermissionDenied,
)
from store.settings import Settings

# Live requests run at vLLM's default priority 0; a lower priority is a higher value.
BATCH_PRIORITY = 10
WINDOW_S = {"24h": 86_400.0}
ENDPOINTS: dict[str, Kind | Literal["response"]] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/responses": "response",  # served by gateway.responses_api's Responder (the chat path)
}
MAX_LINE_BYTES = 1024 * 1024
Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/responses"]
CustomId = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class CreateBatch(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/batches."""

    input_file_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    endpoint: Endpoint
    completion_window: Literal["24h"]
    metadata: Metadata | None = None


class InputLine(msgspec.Struct):
    """One line of a batch's input file; its body is checked as the endpoint checks it."""

    custom_id: CustomId
    method: str
    url: str
    body: msgspec.Raw


class Checked(msgspec.Struct, frozen=True):
    """What checking an input file found: its request count and the one model they all name."""

    total: int
    model: str | None


_line_decoder = msgspec.json.Decoder(InputLine)


def check_input(path: Path, endpoint: str, max_lines: int) -> Checked:
    """Every line of the input file, checked (a 400 names the first bad line); blocking."""
    decode = _decoders()[ENDPOINTS[endpoint]]
    seen: set[str] = set()
    models: set[str] = set()
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if len(seen) == max_lines:
                raise _too_many(max_lines)
            model = _check_line(number, raw, endpoint, decode, seen)
            models.add(model)
    if not seen:
        raise InvalidRequest("the input file has no requests", param="input_file_id")
    return Checked(len(seen), models.pop() if len(models) == 1 else None)


def _decoders() -> dict[Kind | Literal["response"], Callable[[bytes], object]]:
    return {"chat": decode_chat, "completion": decode_completion, "response": decode_request}


def _check_line(
    number: int, raw: bytes, endpoint: str, decode: Callable[[bytes], object], seen: set[str]
) -> str:
    """One line's model, or a 400 saying what is wrong with it."""
    if len(raw) > MAX_LINE_BYTES:
        raise _bad_line(number, f"is longer than {MAX_LINE_BYTES} bytes")
    try:
        line = _line_decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise _bad_line(number, f"is not a batch request: {exc}") from None
    if line.method != "POST":
        raise _bad_line(number, f"has method {line.method!r}; batch requests are POST")
    if line.url != endpoint:
        raise _bad_line(number, f"has url {line.url!r}, not the batch's endpoint {endpoint}")
    if line.custom_id in seen:
        raise _bad_line(number, f"repeats custom_id {line.custom_id!r}; each must be unique")
    seen.add(line.custom_id)
    try:
        req = decode(bytes(line.body))
    except InvalidRequest as exc:
        raise _bad_line(number, f"has a body the endpoint refuses: {exc.message}") from None
    if getattr(req, "stream", False):
        raise _bad_line(number, "asks for a stream; batch answers are never streamed")
    return str(getattr(req, "model", ""))


def _bad_line(number: int, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"line {number} of the input file {what}", param="input_file_id", code="invalid_batch_line"
    )


def _too_many(max_lines: int) -> InvalidRequest:
    return InvalidRequest(
        f"the input file has more than {max_lines} requests, this tenant's bound "
        "(quota max_batch_lines, which the admin sets per tenant): split it",
        param="input_file_id",
        code="bound_exceeded",
    )


def with_batch_id(body: str, batch_id: str) -> bytes:
    """A chat line's body with `batch_id` added to its metadata, so its captured row says it
    came from the batch (a body that is not an object is left for the endpoint to refuse)."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.encode()
    if not isinstance(data, dict):
        return body.encode()
    metadata = data.get("metadata")
    data["metadata"] = {**(metadata if isinstance(metadata, dict) else {}), "batch_id": batch_id}
    return msgspec.json.encode(data)


def error_reply(exc: LoopgateError, request_id: str) -> LineReply:
    """A line's failure as the answer a client would have had."""
    if isinstance(exc, EngineError) and exc.status_code < 500:
        return LineReply(exc.status_code, request_id, exc.content.decode(errors="replace"))
    status = 502 if isinstance(exc, EngineError) else exc.status
    return LineReply(status, request_id, msgspec.json.encode(exc.body()).decode())


class Batches:
    """A tenant's batches: create (checked, within quotas), read, list, cancel; and one line
    served for the worker that runs a batch."""

    def __init__(
        self, settings: Settings, store: Store, quotas: Quotas, files: Files, serving: Serving
    ):
        self.settings = settings
        self.store = store
        self.quotas = quotas
        self.files = files
        self.serving = serving
        # vLLM refuses a priority unless it schedules by priority.
        self.priority = BATCH_PRIORITY if settings.engine_scheduling_policy == "priority" else None

    async def create(self, caller: Caller, req: CreateBatch) -> BatchRecord:
        f = await self.files.file(caller, req.input_file_id)
        if f.purpose != "batch":
            raise InvalidRequest(
                f"file {f.id} has purpose {f.purpose!r}; upload the input with purpose 'batch'",
                param="input_file_id",
            )
        quotas = await self.quotas.of(caller.tenant_id)
        checked = await asyncio.to_thread(
            check_input, Path(f.path), req.endpoint, quotas.max_batch_lines
        )
        return await self._queue(caller, req, checked, quotas)

    async def _queue(
        self, caller: Caller, req: CreateBatch, checked: Checked, quotas: QuotaSet
    ) -> BatchRecord:
        now = time.time()
        batch = BatchRecord(
            id="batch_" + secrets.token_hex(12),
            tenant_id=caller.tenant_id,
            key_id=caller.key_id,
            endpoint=req.endpoint,
            input_file_id=req.input_file_id,
            completion_window=req.completion_window,
            status="validating",
            metadata=dict(req.metadata or {}),
            model=checked.model,
            total=checked.total,
            created_at=now,
            expires_at=now + WINDOW_S[req.completion_window],
        )
        over = await self.store.add_batch(batch, quotas.limits())
        if over is not None:
            raise refusal(quotas, over)
        return batch

    async def get(self, caller: Caller, batch_id: str) -> BatchRecord:
        found = await self.store.get_batch(caller.tenant_id, batch_id)
        if found is None:
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
        return found

    async def cancel(self, caller: Caller, batch_id: str) -> BatchRecord:
        found = await self.store.cancel_batch(caller.tenant_id, batch_id)
        if found is None:
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
        if found.status not in ("cancelling", "cancelled"):
            raise Conflict(f"batch {batch_id} is {found.status}; it can no longer be cancelled")
        return found

    # -- one line, for the evals worker running the batch ------------------------------------

    async def run_line(
        self, tenant: Tenant, batch_id: str, line: BatchLine, request_id: str
    ) -> LineReply:
        """Serve one line as the tenant's own request (the key that created the batch)."""
        batch = await self.store.get_batch(tenant.id, batch_id)
        if batch is None:
            raise NotFound(f"no batch '{batch_id}' for this tenant", param="batch_id")
        if batch.status not in ("in_progress", "cancelling"):
            raise Conflict(f"batch {batch_id} is {batch.status}; its lines are no longer served")
        caller = Caller(
            tenant.id, tenant.name, batch.key_id, tenant.store_default, tenant.redact_pii
        )
        body = with_batch_id(line.body, batch.id)
        try:
            if tenant.disabled:
                raise PermissionDenied("the tenant is disabled")
            kind = ENDPOINTS[batch.endpoint]
            if kind == "response":
                responder = Responder(self.serving, self.store)
                response = await responder.create(caller, body, request_id, self.priority)
            else:
                response = await self.serving.complete(
                    caller, body, kind, request_id, priority=self.priority
                )
        except LoopgateError as exc:
            return error_reply(exc, request_id)
        content = response.content if isinstance(response.content, bytes) else b""
        return LineReply(response.status_code or 200, request_id, content.decode())
