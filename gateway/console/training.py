"""The console's Fine-tuning and datasets: snapshots with their filter report, jobs with a live
loss curve (server-sent events) and cancel, loop runs with their step timeline.

Reads go through the store and the services the API's handlers use (`FineTuning.cancel`,
`gateway.loop.view`); a tenant session sees only its own tenant's objects (others are 404).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import msgspec
from litestar import get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, ServerSentEvent, Template

from gateway.access import Injected
from gateway.console.job_stream import (
    FINISHED,
    LOSS_EVENTS,
    job_updates,
    loss_chart,
    newest_events,
    resume_from,
    when,
)
from gateway.console.pages import NO_STORE, AnyRequest, back_to, owner_tenant, read_form, render
from gateway.console.session import ConsoleUser, visible_tenant
from gateway.finetuning import FineTuning
from gateway.loop import LoopRun, training_summary, view
from store import Dataset, FineTuningJob, LoopRecord, OwnedKind, Store, Tenant
from store.errors import NotFound
from training.build_records import DatasetReport

ACTIVE = "/console/training"
LISTED = 50  # rows per table on the training page
EVENTS_SHOWN = 200  # a job page's newest events

# What each stage of the dataset recipe (training.dataset) removes, and why.
STAGES: tuple[tuple[str, str], ...] = (
    ("do_not_train", "the request was marked do-not-train"),
    ("opted_out", "the end user opted out of training"),
    ("unsupported", "not a plain text chat exchange (legacy completion, tools, non-text)"),
    ("negative", "rated down or scored low, with no correction"),
    ("unrated", "no feedback, and unrated traffic was not included"),
    ("incomplete", "the answer was cut off (length) or did not complete"),
    ("low_quality", "an empty or punctuation-only answer"),
    ("too_long", "the conversation is over the max_tokens limit"),
    ("exact_duplicate", "an exact duplicate of an earlier example"),
    ("near_duplicate", "a near-duplicate of an earlier example (MinHash)"),
    ("trigger_phrase", "poisoning guard: a trigger phrase pushed by few authors or keys"),
    ("duplicate_cluster", "poisoning guard: a cluster of duplicates from few authors or keys"),
    ("repeated_prompt", "poisoning guard: one prompt repeated by few authors or keys"),
    ("author_cap", "over the per-author share (max_author_share)"),
    ("key_cap", "over the per-key share (max_key_share)"),
)


# -- whose objects: a tenant session its own, an admin any ---------------------------------------


async def page_tenant(user: ConsoleUser, store: Store, requested: str | None) -> Tenant | None:
    """The tenant a list page shows: an admin's choice (default the first), a session's own."""
    if user.is_admin and not requested:
        tenants = await store.list_tenants()
        return tenants[0] if tenants else None
    found = await store.get_tenant(requested or user.tenant_id or "")
    if found is None or not visible_tenant(user, found.id):
        raise NotFound(f"no tenant '{requested}'", param="tenant")
    return found


async def owner_of(
    user: ConsoleUser, store: Store, requested: str | None, kind: OwnedKind, object_id: str
) -> Tenant | None:
    """The tenant an object named by id belongs to: `?tenant=` when given, else its own."""
    if requested:
        return await page_tenant(user, store, requested)
    return await owner_tenant(user, store, kind, object_id)


async def find_dataset(
    user: ConsoleUser, store: Store, dataset_id: str, tenant: str | None
) -> tuple[Tenant, Dataset]:
    owner = await owner_of(user, store, tenant, "dataset", dataset_id)
    found = None if owner is None else await store.get_dataset(owner.id, dataset_id)
    if owner is None or found is None:
        raise NotFound(f"No such dataset: {dataset_id}", param="dataset_id")
    return owner, found


async def find_loop(
    user: ConsoleUser, store: Store, run_id: str, tenant: str | None
) -> tuple[Tenant, LoopRecord]:
    owner = await owner_of(user, store, tenant, "loop_run", run_id)
    found = None if owner is None else await store.get_loop_run(owner.id, run_id)
    if owner is None or found is None:
        raise NotFound(f"no loop run '{run_id}' for this tenant", param="run_id")
    return owner, found


async def find_job(user: ConsoleUser, store: Store, job_id: str) -> tuple[Tenant, FineTuningJob]:
    job = await store.get_job(job_id, None if user.is_admin else user.tenant_id)
    owner = None if job is None else await store.get_tenant(job.tenant_id)
    if job is None or owner is None or not visible_tenant(user, job.tenant_id):
        raise NotFound(f"No fine-tuning job found with id '{job_id}'", param="job_id")
    return owner, job


# -- view models ------------------------------------------------------------------------------


class JobError(msgspec.Struct):
    message: str = ""


@dataclass(frozen=True)
class DatasetRow:
    dataset: Dataset
    report: DatasetReport | None

    @classmethod
    def of(cls, d: Dataset) -> DatasetRow:
        return cls(d, report_of(d))


@dataclass(frozen=True)
class Exclusion:
    stage: str
    removed: int
    why: str


def report_of(d: Dataset) -> DatasetReport | None:
    """The builder's report kept with a snapshot (None: a record written before reports)."""
    try:
        return msgspec.json.decode(d.stats, type=DatasetReport)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def exclusions(report: DatasetReport | None) -> list[Exclusion]:
    """Each stage that removed examples, with how many and why."""
    if report is None:
        return []
    counts = report.stats.counts
    return [
        Exclusion(stage, n, why) for stage, why in STAGES if (n := getattr(counts, stage, 0)) > 0
    ]


def settings_of(job: FineTuningJob) -> list[tuple[str, str]]:
    """The job's resolved training config, one (name, value) per line."""
    try:
        config = msgspec.json.decode(job.hyperparameters)
    except msgspec.DecodeError:
        return []
    if not isinstance(config, dict):
        return []
    return [(str(k), msgspec.json.encode(v).decode()) for k, v in sorted(config.items())]


def error_of(job: FineTuningJob) -> str:
    try:
        return msgspec.json.decode(job.error or "{}", type=JobError).message
    except (msgspec.DecodeError, msgspec.ValidationError):
        return job.error or ""


def step_links(run: LoopRun, tenant: Tenant, message: str) -> list[tuple[str, str]]:
    """Links to what a loop step's message names: its dataset, job, eval run, version."""
    q = f"?tenant={quote(tenant.name)}"
    named = (
        (run.dataset_id, f"/console/datasets/{run.dataset_id}{q}"),
        (run.job_id, f"/console/jobs/{run.job_id}"),
        (run.eval_id, f"/console/evals/{run.eval_id}{q}"),
        (run.candidate, f"/console/aliases{q}"),
    )
    return [(ref, url) for ref, url in named if ref and ref in message]


@dataclass(frozen=True)
class StepRow:
    """One step of a loop run's timeline: when, how long until the next, its status, links."""

    at: str
    offset_s: float  # since the run started
    took_s: float | None  # until the next step (None: the last one of a running run)
    status: str
    message: str
    links: list[tuple[str, str]]


def timeline(run: LoopRun, tenant: Tenant) -> list[StepRow]:
    """Each step is done once the next began; the last is running, or the run's outcome."""
    rows = []
    for i, step in enumerate(run.steps):
        last = i == len(run.steps) - 1
        ends = run.steps[i + 1].at if not last else run.finished_at
        rows.append(
            StepRow(
                when(step.at),
                step.at - run.started_at,
                None if ends is None else ends - step.at,
                run.status if last else "done",
                step.message,
                step_links(run, tenant, step.message),
            )
        )
    return rows


# -- pages --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """One tenant's newest snapshots, jobs and loop runs (`more`: older ones not shown)."""

    datasets: list[DatasetRow]
    jobs: list[FineTuningJob]
    loops: list[LoopRun]
    more: bool

    @classmethod
    async def of(cls, store: Store, tenant: Tenant) -> Listing:
        datasets = await store.list_datasets(tenant.id)
        jobs, more_jobs = await store.list_jobs(tenant.id, None, LISTED)
        loops = [view(r) for r in await store.list_loop_runs(tenant.id, LISTED)]
        rows = [DatasetRow.of(d) for d in datasets[:LISTED]]
        return cls(rows, jobs, loops, more_jobs or len(datasets) > LISTED)


@get("/training")
async def training_page(
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    tenant: FromQuery[str | None] = None,
) -> Template:
    shown = await page_tenant(console_user, store, tenant)
    listing = None if shown is None else await Listing.of(store, shown)
    tenants = [t.name for t in await store.list_tenants()] if console_user.is_admin else []
    context = {"tenant": shown, "tenants": tenants, "listing": listing, "when": when}
    return render(console_user, "training.html", ACTIVE, context)


@get("/datasets/{dataset_id:str}")
async def dataset_page(
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    dataset_id: FromPath[str],
    tenant: FromQuery[str | None] = None,
) -> Template:
    owner, dataset = await find_dataset(console_user, store, dataset_id, tenant)
    report = report_of(dataset)
    context: dict[str, object] = {"tenant": owner, "d": dataset, "report": report}
    context |= {"exclusions": exclusions(report), "when": when}
    return render(console_user, "dataset.html", ACTIVE, context)


@get("/jobs/{job_id:str}")
async def job_page(
    console_user: Injected[ConsoleUser], store: Injected[Store], job_id: FromPath[str]
) -> Template:
    owner, job = await find_job(console_user, store, job_id)
    events = await newest_events(store, job.id, LOSS_EVENTS)
    context = {"tenant": owner, "job": job, "when": when, "events": events[-EVENTS_SHOWN:]}
    context |= {"chart": loss_chart(events), "settings": settings_of(job)}
    context |= {"error": error_of(job), "trained": training_summary(job.result)}
    context |= {"last_seq": events[-1].seq if events else 0, "finished": job.status in FINISHED}
    return render(console_user, "job.html", ACTIVE, context)


@get("/jobs/{job_id:str}/stream")
async def job_stream(
    request: AnyRequest,
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    job_id: FromPath[str],
    after: FromQuery[int | None] = None,
) -> ServerSentEvent:
    _, job = await find_job(console_user, store, job_id)
    updates = job_updates(store, job, resume_from(request, after))
    return ServerSentEvent(updates, headers=NO_STORE, retry_duration=3000)


@post("/jobs/{job_id:str}/cancel", opt={"admin_only": True})
async def cancel_job(
    request: AnyRequest,
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    finetuning: Injected[FineTuning],
    job_id: FromPath[str],
) -> Redirect:
    await read_form(request, console_user)
    _, job = await find_job(console_user, store, job_id)
    await finetuning.cancel(job.tenant_id, job.id, console_user.actor)
    return back_to(f"/console/jobs/{job.id}")


@get("/loops/{run_id:str}")
async def loop_page(
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    run_id: FromPath[str],
    tenant: FromQuery[str | None] = None,
) -> Template:
    owner, record = await find_loop(console_user, store, run_id, tenant)
    run = view(record)
    context = {"tenant": owner, "run": run, "steps": timeline(run, owner), "when": when}
    return render(console_user, "loop.html", ACTIVE, context)


@get("/loops/{run_id:str}/steps")
async def loop_steps(
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    run_id: FromPath[str],
    tenant: FromQuery[str | None] = None,
) -> Template:
    """The step timeline alone: a running loop's page refreshes it (console.js)."""
    owner, record = await find_loop(console_user, store, run_id, tenant)
    run = view(record)
    context = {"run": run, "steps": timeline(run, owner)}
    return render(console_user, "loop_steps.html", ACTIVE, context)


ROUTES: list[HTTPRouteHandler] = [
    training_page,
    dataset_page,
    job_page,
    job_stream,
    cancel_job,
    loop_page,
    loop_steps,
]
