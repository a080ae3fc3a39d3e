"""OpenAI's Batch API routes (`/v1/batches`) and the line route its evals worker uses (thin)."""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, JSONBody

from evals.batch_lines import BatchLine, LineReply
from gateway import apidoc
from gateway.access import Injected
from gateway.batches import Batches, CreateBatch
from gateway.bodies import Json
from gateway.completions_api import PageLimit
from gateway.request_id import request_id
from gateway.tenancy import Admin, Caller
from store import BatchRecord, BatchStatus, Store

AnyRequest = Request[object, object, State]


class RequestCounts(msgspec.Struct, kw_only=True):
    total: int
    completed: int
    failed: int


class BatchError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[BatchError]


def _ts(at: float | None) -> int | None:
    return None if at is None else int(at)


class Batch(msgspec.Struct, kw_only=True):
    """OpenAI's Batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str]

    @classmethod
    def of(cls, b: BatchRecord) -> Batch:
        failed = [BatchError(code="batch_failed", message=b.error)] if b.error else None
        return cls(
            id=b.id,
            endpoint=b.endpoint,
            model=b.model,
            errors=BatchErrors(data=failed) if failed else None,
            input_file_id=b.input_file_id,
            completion_window=b.completion_window,
            status=b.status,
            output_file_id=b.output_file_id,
            error_file_id=b.error_file_id,
            created_at=int(b.created_at),
            in_progress_at=_ts(b.in_progress_at),
            expires_at=_ts(b.expires_at),
            finalizing_at=_ts(b.finalizing_at),
            completed_at=_ts(b.completed_at),
            failed_at=_ts(b.failed_at),
            expired_at=_ts(b.expired_at),
            cancelling_at=_ts(b.cancelling_at),
            cancelled_at=_ts(b.cancelled_at),
            request_counts=RequestCounts(total=b.total, completed=b.completed, failed=b.failed),
            metadata=b.metadata,
        )


class BatchPage(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


@post(
    "/v1/batches",
    status_code=200,
    summary="Create a batch from an uploaded JSONL file (purpose 'batch')",
    dto=Json[CreateBatch],
    return_dto=None,
    responses=apidoc.tenant(404, 413, 429, *apidoc.WRITE),
)
async def create_batch(
    caller: Injected[Caller], batches: Injected[Batches], data: JSONBody[CreateBatch]
) -> Batch:
    return Batch.of(await batches.create(caller, data))


@get("/v1/batches", summary="List batches", responses=apidoc.tenant())
async def list_batches(
    caller: Injected[Caller],
    store: Injected[Store],
    after: FromQuery[str | None] = None,
    limit: PageLimit = 20,
) -> BatchPage:
    found, more = await store.list_batches(caller.tenant_id, after, limit)
    data = [Batch.of(b) for b in found]
    first, last = (data[0].id, data[-1].id) if data else (None, None)
    return BatchPage(data=data, first_id=first, last_id=last, has_more=more)


@get("/v1/batches/{batch_id:str}", summary="Retrieve a batch", responses=apidoc.tenant(404))
async def get_batch(
    caller: Injected[Caller], batches: Injected[Batches], batch_id: FromPath[str]
) -> Batch:
    return Batch.of(await batches.get(caller, batch_id))


@post(
    "/v1/batches/{batch_id:str}/cancel",
    status_code=200,
    summary="Cancel a batch (lines in flight finish; the partial output is kept)",
    responses=apidoc.tenant(404, 409, *apidoc.WRITE),
)
async def cancel_batch(
    caller: Injected[Caller], batches: Injected[Batches], batch_id: FromPath[str]
) -> Batch:
    return Batch.of(await batches.cancel(caller, batch_id))


ROUTES = [create_batch, list_batches, get_batch, cancel_batch]


class BatchLineController(Controller):
    path = "/admin/tenants/{tenant:str}/batches"

    @post(
        "/{batch_id:str}/lines",
        status_code=200,
        summary="Serve one line of a running batch (its evals worker's)",
        dto=Json[BatchLine],
        return_dto=None,
        responses=apidoc.admin(404, 409, 413, 503),
    )
    async def line(
        self,
        request: AnyRequest,
        tenant: FromPath[str],
        batch_id: FromPath[str],
        data: JSONBody[BatchLine],
        admin: Injected[Admin],
        batches: Injected[Batches],
    ) -> LineReply:
        found = await admin.tenant(tenant)
        return await batches.run_line(found, batch_id, data, request_id(request.scope))
