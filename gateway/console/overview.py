"""The console's Overview: the replicas, traffic and errors per tenant over the last hour, and the
work still going on (fine-tuning jobs, eval runs, canaries, loop runs). The replicas and the work
are its live part, which reloads itself every few seconds from `/console/overview/live`.

Admins see every tenant; a tenant session sees only its own traffic, work and adapters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import msgspec
from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.response import Template
from markupsafe import Markup

from adapters.placement import AdapterPool
from gateway.access import Injected
from gateway.admin_adapters import replicas_of
from gateway.canary import Canaries
from gateway.console.charts import line_chart
from gateway.console.pages import render
from gateway.console.session import ConsoleUser
from gateway.loop import view as loop_view
from gateway.responses import Replica
from replicas.pool import BackendPool
from store import ActiveWork, Canary, LoopRecord, Store, TrafficBucket
from store.errors import PermissionDenied

WINDOW_S = 3600.0  # the traffic shown: the last hour ...
BUCKET_S = 300.0  # ... in 5-minute buckets, aligned to the clock so a reload keeps them
LIMIT = 20  # the most of each kind of work listed
LIVE_EVERY_S = 5


# -- view models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TenantTraffic:
    """One tenant's captured requests in the window: totals and a chart per bucket."""

    name: str
    requests: int
    errors: int
    chart: Markup

    @property
    def error_rate(self) -> str:
        return f"{self.errors / self.requests:.1%}" if self.requests else "-"


@dataclass(frozen=True)
class WorkItem:
    """One piece of work not yet ended, linked to its own page."""

    kind: str
    tenant: str
    what: str
    status: str
    started: str
    href: str


@dataclass(frozen=True)
class Live:
    """The part of the page that reloads itself: the replicas and the work going on."""

    replicas: list[Replica]
    work: list[WorkItem]
    more: bool  # some kind of work had more than LIMIT items; the newest are listed
    limit: int = LIMIT


@dataclass(frozen=True)
class Sources:
    """The services the overview reads: the same ones the admin API's handlers use."""

    store: Store
    pool: BackendPool
    adapters: AdapterPool
    canaries: Canaries


# -- reading ----------------------------------------------------------------------------------


def scope(user: ConsoleUser) -> str | None:
    """The tenant a session may see (None: every tenant, for admins)."""
    if user.is_admin:
        return None
    if user.tenant_id is None:
        raise PermissionDenied("this session names no tenant; sign in again")
    return user.tenant_id


async def tenant_names(store: Store, user: ConsoleUser) -> dict[str, str]:
    """Tenant id → name, of the tenants this person may see."""
    if user.is_admin:
        return {t.id: t.name for t in await store.list_tenants()}
    tenant_id = scope(user) or ""
    return {tenant_id: user.tenant_name or tenant_id}


def window(now: float) -> tuple[float, float]:
    """[since, until): the last hour, its end rounded up to a bucket boundary."""
    until = math.ceil(now / BUCKET_S) * BUCKET_S
    return until - WINDOW_S, until


async def traffic(
    store: Store, user: ConsoleUser, names: Mapping[str, str], now: float
) -> list[TenantTraffic]:
    """Each visible tenant's traffic in the window, busiest first (grouped by the store)."""
    since, until = window(now)
    rows = await store.traffic(scope(user), since, until, BUCKET_S)
    by_tenant: dict[str, list[TrafficBucket]] = {tenant_id: [] for tenant_id in names}
    for row in rows:
        if row.tenant_id in by_tenant:
            by_tenant[row.tenant_id].append(row)
    shown = [tenant_traffic(names[t], buckets, since - now) for t, buckets in by_tenant.items()]
    return sorted(shown, key=lambda t: (-t.requests, t.name))


def tenant_traffic(name: str, buckets: list[TrafficBucket], start_s: float) -> TenantTraffic:
    """Totals and a chart of requests and errors per bucket (x: minutes, 0 is now)."""
    counts = {b.bucket: b for b in buckets}
    xs = [(start_s + i * BUCKET_S) / 60 for i in range(int(WINDOW_S // BUCKET_S))]
    requests = [(x, float(counts[i].requests if i in counts else 0)) for i, x in enumerate(xs)]
    errors = [(x, float(counts[i].errors if i in counts else 0)) for i, x in enumerate(xs)]
    chart = line_chart(
        [("requests", requests), ("errors", errors)],
        width=480,
        height=160,
        y_label="per 5 min",
        x_label="minutes (0 = now)",
    )
    total = sum(b.requests for b in buckets)
    return TenantTraffic(name, total, sum(b.errors for b in buckets), chart)


async def live(sources: Sources, user: ConsoleUser) -> Live:
    """The replicas and the work going on, as this person may see them."""
    names = await tenant_names(sources.store, user)
    replicas = await visible_replicas(sources, user)
    work = await sources.store.active_work(scope(user), LIMIT + 1)
    canaries = active_canaries(sources.canaries, scope(user))
    more = any(len(kind) > LIMIT for kind in (work.jobs, work.evals, work.loops, canaries))
    return Live(replicas, work_items(trimmed(work), canaries[:LIMIT], names), more)


async def visible_replicas(sources: Sources, user: ConsoleUser) -> list[Replica]:
    """The replicas as `GET /admin/backends` shows them; a tenant sees only its own adapters."""
    replicas = replicas_of(sources.pool, sources.adapters).data
    tenant_id = scope(user)
    if tenant_id is None:
        return replicas
    own = {v.id for v in await sources.store.list_adapters(tenant_id)}
    return [
        msgspec.structs.replace(r, adapters=[a for a in r.adapters if a.version in own])
        for r in replicas
    ]


def active_canaries(canaries: Canaries, tenant_id: str | None) -> list[Canary]:
    """The active canaries the Canaries service routes by, newest first."""
    records = [r.record for r in canaries.running.values()]
    visible = [c for c in records if tenant_id is None or c.tenant_id == tenant_id]
    return sorted(visible, key=lambda c: (-c.started_at, c.id))


def trimmed(work: ActiveWork) -> ActiveWork:
    return ActiveWork(work.jobs[:LIMIT], work.evals[:LIMIT], work.loops[:LIMIT])


def work_items(
    work: ActiveWork, canaries: Iterable[Canary], names: Mapping[str, str]
) -> list[WorkItem]:
    """Every piece of work as one row: jobs, eval runs, canaries, loop runs (each newest first)."""

    def name(tenant_id: str) -> str:
        return names.get(tenant_id, tenant_id)

    items = [
        WorkItem(
            "fine-tuning job",
            name(j.tenant_id),
            f"{j.id} · {j.model}",
            j.status,
            when(j.created_at),
            f"/console/jobs/{quote(j.id)}",
        )
        for j in work.jobs
    ]
    items += [
        WorkItem(
            "eval run",
            name(r.tenant_id),
            f"{r.id} · {r.alias}: candidate {r.candidate}",
            r.status,
            when(r.created_at),
            f"/console/evals/{quote(r.id)}",
        )
        for r in work.evals
    ]
    items += [canary_item(c, name(c.tenant_id)) for c in canaries]
    items += [loop_item(record, name(record.tenant_id)) for record in work.loops]
    return items


def canary_item(c: Canary, tenant: str) -> WorkItem:
    what = f"{c.alias}: {c.version} at {c.percent:g}%"
    href = f"/console/aliases?tenant={quote(tenant)}"
    return WorkItem("canary", tenant, what, c.status, when(c.started_at), href)


def loop_item(record: LoopRecord, tenant: str) -> WorkItem:
    run = loop_view(record)  # the run as the API shows it
    step = run.steps[-1].message if run.steps else "waiting for an evals worker"
    what = f"{run.id} · {run.alias}: {step}"
    href = f"/console/loops/{quote(run.id)}"
    return WorkItem("loop run", tenant, what, run.status, when(run.started_at), href)


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- routes -----------------------------------------------------------------------------------


@get("/")
async def overview(
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    pool: Injected[BackendPool],
    adapters: Injected[AdapterPool],
    canaries: Injected[Canaries],
) -> Template:
    sources = Sources(store, pool, adapters, canaries)
    names = await tenant_names(store, console_user)
    context = {
        "live": await live(sources, console_user),
        "traffic": await traffic(store, console_user, names, time.time()),
        "refresh_s": LIVE_EVERY_S,
    }
    return render(console_user, "overview.html", "/console", context)


@get("/overview/live")
async def overview_live(
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    pool: Injected[BackendPool],
    adapters: Injected[AdapterPool],
    canaries: Injected[Canaries],
) -> Template:
    """The live part alone (a fragment, not a page), for the page's 5-second reload."""
    sources = Sources(store, pool, adapters, canaries)
    context = {"live": await live(sources, console_user)}
    return render(console_user, "overview_live.html", "/console", context)


ROUTES: list[HTTPRouteHandler] = [overview, overview_live]
