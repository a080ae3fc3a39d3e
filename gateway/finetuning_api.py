"""OpenAI-shaped files and fine-tuning jobs routes, plus loopgate's dataset snapshots (thin)."""

from __future__ import annotations

from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import File as FileResponse

from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Json
from gateway.checkpoints import Checkpoint
from gateway.completions_api import PageLimit
from gateway.dataset_policy import BuildDataset
from gateway.files import Files
from gateway.finetuning import CreateJob, FineTuning
from gateway.responses import DatasetSnapshot, Event, File, FileDeleted, Job, PageOf
from gateway.tenancy import Caller
from store import Store
from store.errors import InvalidRequest
from store.settings import Settings

AnyRequest = Request[object, object, State]
JOBS = "/v1/fine_tuning/jobs"
UPLOAD = {
    "multipart/form-data": apidoc.schema(
        {
            "type": "object",
            "required": ["file", "purpose"],
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "purpose": {"enum": ["fine-tune", "batch"]},
            },
        }
    )
}


def event_seq(after: str | None) -> int | None:
    """The sequence number in an event id (`ftevent-<seq>`), which the store keeps in 64 bits."""
    if not after:
        return None
    try:
        seq = int(after.removeprefix("ftevent-"))
    except ValueError:
        seq = -1
    if not 0 <= seq < 2**63:  # a larger one cannot be stored, so names no event
        raise InvalidRequest("after must be an event id", param="after")
    return seq


def routes(settings: Settings) -> list[HTTPRouteHandler]:
    """The handlers; the upload route's body limit comes from the settings."""

    @post(
        "/v1/files",
        status_code=200,
        summary="Upload a fine-tuning file (JSONL conversations)",
        request_max_body_size=settings.file_max_bytes + 65536,
        operation_class=apidoc.raw_body(UPLOAD),
        responses=apidoc.tenant(413, 422, 429, 503),
    )
    async def upload_file(
        request: AnyRequest, caller: Injected[Caller], files: Injected[Files]
    ) -> File:
        """Streamed to disk as it arrives (gateway.files), never read whole into memory."""
        return File.of(await files.upload(caller, request.content_type, request.stream()))

    return [upload_file, *ROUTES]


@get("/v1/files", summary="List files", responses=apidoc.tenant())
async def list_files(caller: Injected[Caller], store: Injected[Store]) -> PageOf[File]:
    found = await store.list_files(caller.tenant_id)
    return PageOf(data=[File.of(f) for f in found], has_more=False)


@get("/v1/files/{file_id:str}", summary="Retrieve a file", responses=apidoc.tenant(404))
async def get_file(
    caller: Injected[Caller], files: Injected[Files], file_id: FromPath[str]
) -> File:
    return File.of(await files.file(caller, file_id))


@get(
    "/v1/files/{file_id:str}/content",
    summary="Retrieve a file's content",
    media_type="application/octet-stream",
    responses=apidoc.tenant(404),
)
async def file_content(
    caller: Injected[Caller], files: Injected[Files], file_id: FromPath[str]
) -> FileResponse:
    """The file's bytes as uploaded (or as written: a batch's output), streamed from disk."""
    found = await files.file(caller, file_id)
    return FileResponse(found.path, filename=found.filename, content_disposition_type="inline")


@delete(
    "/v1/files/{file_id:str}",
    status_code=200,
    summary="Delete a file",
    responses=apidoc.tenant(404, *apidoc.WRITE),
)
async def delete_file(
    caller: Injected[Caller], files: Injected[Files], file_id: FromPath[str]
) -> FileDeleted:
    await files.delete(caller, file_id)
    return FileDeleted(id=file_id)


@post(
    "/v1/datasets",
    status_code=201,
    summary="Snapshot a dataset from captured traffic",
    dto=Json[BuildDataset],
    return_dto=None,
    responses=apidoc.tenant(413, 422, 429, 503),
)
async def build_dataset(
    caller: Injected[Caller],
    finetuning: Injected[FineTuning],
    data: JSONBody[BuildDataset | None] = None,
) -> DatasetSnapshot:
    built = await finetuning.build_from_traffic(caller, data or BuildDataset())
    return DatasetSnapshot.of(built)


@get("/v1/datasets", summary="List dataset snapshots", responses=apidoc.tenant())
async def list_datasets(
    caller: Injected[Caller], store: Injected[Store]
) -> PageOf[DatasetSnapshot]:
    found = await store.list_datasets(caller.tenant_id)
    return PageOf(data=[DatasetSnapshot.of(d) for d in found], has_more=False)


@get(
    "/v1/datasets/{dataset_id:str}",
    summary="Retrieve a dataset snapshot",
    responses=apidoc.tenant(404),
)
async def get_dataset(
    caller: Injected[Caller],
    finetuning: Injected[FineTuning],
    dataset_id: FromPath[str],
) -> DatasetSnapshot:
    return DatasetSnapshot.of(await finetuning.dataset(caller, dataset_id))


@post(
    JOBS,
    status_code=200,
    summary="Create a fine-tuning job",
    dto=Json[CreateJob],
    return_dto=None,
    responses=apidoc.tenant(404, 413, 422, 429, 503),
)
async def create_job(
    caller: Injected[Caller], finetuning: Injected[FineTuning], data: JSONBody[CreateJob]
) -> Job:
    return Job.of(await finetuning.create_job(caller, data))


@get(JOBS, summary="List fine-tuning jobs", responses=apidoc.tenant())
async def list_jobs(
    caller: Injected[Caller],
    store: Injected[Store],
    after: FromQuery[str | None] = None,
    limit: PageLimit = 20,
) -> PageOf[Job]:
    jobs, more = await store.list_jobs(caller.tenant_id, after, limit)
    return PageOf(data=[Job.of(j) for j in jobs], has_more=more)


@get(JOBS + "/{job_id:str}", summary="Retrieve a fine-tuning job", responses=apidoc.tenant(404))
async def get_job(
    caller: Injected[Caller], finetuning: Injected[FineTuning], job_id: FromPath[str]
) -> Job:
    return Job.of(await finetuning.job(caller, job_id))


@get(
    JOBS + "/{job_id:str}/events",
    summary="A fine-tuning job's events",
    responses=apidoc.tenant(404),
)
async def job_events(
    caller: Injected[Caller],
    finetuning: Injected[FineTuning],
    store: Injected[Store],
    job_id: FromPath[str],
    after: FromQuery[str | None] = None,
    limit: PageLimit = 20,
) -> PageOf[Event]:
    job = await finetuning.job(caller, job_id)
    events, more = await store.list_job_events(job.id, event_seq(after), limit)
    return PageOf(data=[Event.of(e) for e in events], has_more=more)


@get(
    JOBS + "/{job_id:str}/checkpoints",
    summary="A fine-tuning job's per-epoch checkpoints (newest first)",
    responses=apidoc.tenant(404),
)
async def job_checkpoints(
    caller: Injected[Caller],
    finetuning: Injected[FineTuning],
    job_id: FromPath[str],
    after: FromQuery[str | None] = None,
    limit: PageLimit = 10,
) -> PageOf[Checkpoint]:
    job = await finetuning.job(caller, job_id)
    found, more = await finetuning.checkpoints.page(job, after, limit)
    return PageOf(data=[Checkpoint.of(c) for c in found], has_more=more)


@post(
    JOBS + "/{job_id:str}/cancel",
    status_code=200,
    summary="Cancel a fine-tuning job",
    responses=apidoc.tenant(404, *apidoc.WRITE),
)
async def cancel_job(
    caller: Injected[Caller], finetuning: Injected[FineTuning], job_id: FromPath[str]
) -> Job:
    return Job.of(await finetuning.cancel(caller.tenant_id, job_id, f"key:{caller.key_id}"))


ROUTES = [
    list_files,
    get_file,
    file_content,
    delete_file,
    build_dataset,
    list_datasets,
    get_dataset,
    create_job,
    list_jobs,
    get_job,
    job_events,
    job_checkpoints,
    cancel_job,
]
