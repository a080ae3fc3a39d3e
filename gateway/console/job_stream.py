"""A fine-tuning job's events and loss curve as the console shows them, and their live
server-sent stream: the store is read every `POLL_S` and what is new goes out, until the job
has finished or `STREAM_MAX_S` has passed (the browser reconnects with Last-Event-ID)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import msgspec
from litestar.response.sse import ServerSentEventMessage
from markupsafe import Markup

from gateway.console.charts import Point, line_chart
from gateway.console.pages import AnyRequest
from store import FineTuningJob, JobEvent, Store
from store.errors import InvalidRequest

LOSS_EVENTS = 2000  # the newest events a loss curve is drawn from
POLL_S = 1.0  # how often a job's stream reads the store
STREAM_MAX_S = 600.0  # then the stream ends; the browser reconnects with Last-Event-ID
SETTLE_S = 1.0  # a job's last event is written just after its status: read once more
FINISHED = ("succeeded", "failed", "cancelled")


def when(at: float | None) -> str:
    """A stored time as people read it (UTC)."""
    return "" if at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


class Progress(msgspec.Struct):
    """The metrics a training worker puts on a progress event (training.job_runner)."""

    step: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None


class EventView(msgspec.Struct, frozen=True):
    """One job event as the page and its stream show it."""

    seq: int
    at: str
    level: str
    message: str
    step: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None

    @classmethod
    def of(cls, e: JobEvent) -> EventView:
        try:
            p = msgspec.json.decode(e.data or "{}", type=Progress)
        except msgspec.DecodeError:
            p = Progress()
        return cls(e.seq, when(e.at), e.level, e.message, p.step, p.train_loss, p.eval_loss)


def loss_chart(events: Sequence[EventView]) -> Markup:
    """Training and eval loss by step, from the job's progress events."""
    train: list[Point] = []
    held_out: list[Point] = []
    for e in sorted(events, key=lambda e: e.seq):
        if e.step is not None and e.train_loss is not None:
            train.append((e.step, e.train_loss))
        if e.step is not None and e.eval_loss is not None:
            held_out.append((e.step, e.eval_loss))
    series = [(name, pts) for name, pts in (("train loss", train), ("eval loss", held_out)) if pts]
    return line_chart(series, y_label="loss", x_label="step")


async def newest_events(store: Store, job_id: str, limit: int) -> list[EventView]:
    """A job's newest `limit` events, oldest first."""
    events, _ = await store.list_job_events(job_id, None, limit)
    return [EventView.of(e) for e in reversed(events)]


async def events_since(store: Store, job_id: str, seq: int, page: int = 100) -> list[EventView]:
    """A job's events after `seq`, oldest first (the store pages from the newest down)."""
    found: list[JobEvent] = []
    before: int | None = None
    while True:
        events, more = await store.list_job_events(job_id, before, page)
        fresh = [e for e in events if e.seq > seq]
        found += fresh
        if len(fresh) < len(events) or not more:
            return [EventView.of(e) for e in reversed(found)]
        before = events[-1].seq


def _message(event: str, data: str, seq: int | None = None) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=data, event=event, id=seq)


def _status(job: FineTuningJob) -> str:
    return msgspec.json.encode(
        {"status": job.status, "stage": job.stage, "cancel_requested": job.cancel_requested}
    ).decode()


def settled(job: FineTuningJob) -> bool:
    """Finished, and long enough ago that its last event is written."""
    return job.status in FINISHED and time.time() - (job.finished_at or 0.0) >= SETTLE_S


async def job_updates(
    store: Store,
    job: FineTuningJob,
    after: int,
    *,
    poll_s: float = POLL_S,
    max_s: float = STREAM_MAX_S,
) -> AsyncIterator[ServerSentEventMessage]:
    """A job's new events, loss curve and status as server-sent events, read from the store
    every `poll_s`; ends when the job has finished (an `end` event) or after `max_s`."""
    shown = await newest_events(store, job.id, LOSS_EVENTS)
    status = ""
    deadline = time.monotonic() + max_s
    while True:
        current = await store.get_job(job.id) or job
        fresh = await events_since(store, job.id, after)
        for e in fresh:
            yield _message("job-event", msgspec.json.encode(e).decode(), e.seq)
        if any(e.step is not None for e in fresh):
            shown = (shown + fresh)[-LOSS_EVENTS:]
            yield _message("chart", str(loss_chart(shown)))
        after = fresh[-1].seq if fresh else after
        if _status(current) != status:
            status = _status(current)
            yield _message("status", status)
        if settled(current):
            yield _message("end", current.status)
            return
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(poll_s)


def resume_from(request: AnyRequest, after: int | None) -> int:
    """Where a stream starts: the browser's Last-Event-ID on a reconnect, else `after`."""
    last = request.headers.get("last-event-id") or ""
    if last.isdigit():
        return int(last)
    if after is not None and after < 0:
        raise InvalidRequest("after must be an event's sequence number", param="after")
    return after or 0
