"""OpenAI-shaped files and fine-tuning jobs routes, plus loopgate's dataset snapshots (thin)."""

from __future__ import annotations

import json

from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from gateway.completions_api import decode_body, page_limit
from gateway.dataset_policy import BuildDataset
from gateway.finetuning import CreateJob
from gateway.runtime import Gateway
from gateway.tenancy import Caller
from store import Dataset, FileObject, FineTuningJob, JobEvent
from store.errors import InvalidRequest
from store.settings import Settings

GW = NamedDependency[Gateway]
AnyRequest = Request[object, object, State]


async def _caller(request: AnyRequest, gw: Gateway) -> Caller:
    return await gw.directory.authenticate(request.headers.get("authorization"))


def file_object(f: FileObject) -> dict[str, object]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": int(f.created_at),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def dataset_object(d: Dataset) -> dict[str, object]:
    return {
        "id": d.id,
        "object": "dataset",
        "created_at": int(d.created_at),
        "content_hash": d.content_hash,
        "source": d.source,
        "source_file_id": d.source_file_id,
        "train_examples": d.train_count,
        "eval_examples": d.eval_count,
        "preference_pairs": d.preference_count,
        "tainted": d.tainted_at is not None,
        "taint_reason": d.taint_reason,
        "erasure": d.erasure,  # pending | rewritten | deleted: what became of its files
        "erased_examples": d.erased_examples,
        "report": json.loads(d.stats),
    }


def job_object(j: FineTuningJob) -> dict[str, object]:
    config = json.loads(j.hyperparameters)
    hyper = {
        "n_epochs": config.get("epochs"),
        "batch_size": config.get("batch_size"),
        "learning_rate_multiplier": config.get("learning_rate", 2e-4) / 2e-4,
        "lora_rank": config.get("rank"),
        "lora_alpha": config.get("alpha"),
        "lora_target_modules": config.get("target_modules"),
        "anchor_weight": config.get("anchor_weight"),
    }
    return {
        "id": j.id,
        "object": "fine_tuning.job",
        "created_at": int(j.created_at),
        "finished_at": int(j.finished_at) if j.finished_at else None,
        "model": j.model,
        "fine_tuned_model": j.fine_tuned_model,
        "organization_id": j.tenant_id,
        "result_files": [],
        "status": j.status,
        "validation_file": j.validation_file,
        "training_file": j.training_file,
        "hyperparameters": hyper,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "trained_tokens": j.trained_tokens,
        "error": json.loads(j.error) if j.error else None,
        "seed": j.seed,
        "estimated_finish": None,
        "integrations": [],
        "metadata": None,
        "user_provided_suffix": j.suffix,
        "loopgate": {
            "stage": j.stage,
            "dataset_id": j.dataset_id,
            "adapter_version": j.adapter_version,
            "base_adapter": j.base_adapter,
            "attempts": j.attempts,
            "cancel_requested": j.cancel_requested,
            "result": json.loads(j.result) if j.result else None,
        },
    }


def event_object(e: JobEvent) -> dict[str, object]:
    return {
        "id": f"ftevent-{e.seq}",
        "object": "fine_tuning.job.event",
        "created_at": int(e.at),
        "level": e.level,
        "message": e.message,
        "data": json.loads(e.data) if e.data else None,
        "type": "metrics" if e.data and "step" in e.data else "message",
    }


def _page(items: list[dict[str, object]], has_more: bool) -> dict[str, object]:
    return {"object": "list", "data": items, "has_more": has_more}


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

    @post("/v1/files", status_code=200, request_max_body_size=settings.file_max_bytes + 65536)
    async def upload_file(request: AnyRequest, gw: GW) -> dict[str, object]:
        """Streamed to disk as it arrives (gateway.files), never read whole into memory."""
        caller = await _caller(request, gw)
        return file_object(await gw.files.upload(caller, request.content_type, request.stream()))

    return [upload_file, *ROUTES]


@get("/v1/files")
async def list_files(request: AnyRequest, gw: GW) -> dict[str, object]:
    caller = await _caller(request, gw)
    files = await gw.store.list_files(caller.tenant_id)
    return _page([file_object(f) for f in files], False)


@get("/v1/files/{file_id:str}")
async def get_file(request: AnyRequest, gw: GW, file_id: FromPath[str]) -> dict[str, object]:
    return file_object(await gw.files.file(await _caller(request, gw), file_id))


@delete("/v1/files/{file_id:str}", status_code=200)
async def delete_file(request: AnyRequest, gw: GW, file_id: FromPath[str]) -> dict[str, object]:
    await gw.files.delete(await _caller(request, gw), file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@post("/v1/datasets", status_code=201)
async def build_dataset(request: AnyRequest, gw: GW) -> dict[str, object]:
    caller = await _caller(request, gw)
    req = decode_body(await request.body(), BuildDataset)
    return dataset_object(await gw.finetuning.build_from_traffic(caller, req))


@get("/v1/datasets")
async def list_datasets(request: AnyRequest, gw: GW) -> dict[str, object]:
    caller = await _caller(request, gw)
    found = await gw.store.list_datasets(caller.tenant_id)
    return _page([dataset_object(d) for d in found], False)


@get("/v1/datasets/{dataset_id:str}")
async def get_dataset(request: AnyRequest, gw: GW, dataset_id: FromPath[str]) -> dict[str, object]:
    return dataset_object(await gw.finetuning.dataset(await _caller(request, gw), dataset_id))


@post("/v1/fine_tuning/jobs", status_code=200)
async def create_job(request: AnyRequest, gw: GW) -> dict[str, object]:
    caller = await _caller(request, gw)
    req = decode_body(await request.body(), CreateJob)
    return job_object(await gw.finetuning.create_job(caller, req))


@get("/v1/fine_tuning/jobs")
async def list_jobs(request: AnyRequest, gw: GW) -> dict[str, object]:
    caller = await _caller(request, gw)
    params = request.query_params
    jobs, more = await gw.store.list_jobs(
        caller.tenant_id, params.get("after"), page_limit(params.get("limit"))
    )
    return _page([job_object(j) for j in jobs], more)


@get("/v1/fine_tuning/jobs/{job_id:str}")
async def get_job(request: AnyRequest, gw: GW, job_id: FromPath[str]) -> dict[str, object]:
    return job_object(await gw.finetuning.job(await _caller(request, gw), job_id))


@get("/v1/fine_tuning/jobs/{job_id:str}/events")
async def job_events(request: AnyRequest, gw: GW, job_id: FromPath[str]) -> dict[str, object]:
    job = await gw.finetuning.job(await _caller(request, gw), job_id)
    params = request.query_params
    events, more = await gw.store.list_job_events(
        job.id, event_seq(params.get("after")), page_limit(params.get("limit"))
    )
    return _page([event_object(e) for e in events], more)


@post("/v1/fine_tuning/jobs/{job_id:str}/cancel", status_code=200)
async def cancel_job(request: AnyRequest, gw: GW, job_id: FromPath[str]) -> dict[str, object]:
    caller = await _caller(request, gw)
    return job_object(await gw.finetuning.cancel(caller.tenant_id, job_id, f"key:{caller.key_id}"))


ROUTES = [
    list_files,
    get_file,
    delete_file,
    build_dataset,
    list_datasets,
    get_dataset,
    create_job,
    list_jobs,
    get_job,
    job_events,
    cancel_job,
]
