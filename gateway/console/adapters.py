"""The console's Aliases and adapters:
targets and history, versions and lineage, promote, roll back, retire, canaries.

Every action goes through the functions and services the admin API's handlers use
(gateway.admin_adapters, gateway.canary); a promotion the gate refuses shows the page again
with the gate's reasons and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlencode

import msgspec
from litestar import get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template

from adapters.placement import AdapterPool
from adapters.registry import Registry
from adapters.swap import Swapper
from gateway.access import Injected
from gateway.admin_adapters import Promote, promote_alias, retire_version, rollback_alias
from gateway.canary import ActiveCanary, Canaries, CanarySpec
from gateway.console.lineage import Row, job_id_of, lineage_rows, lineage_svg
from gateway.console.pages import AnyRequest, back_to, read_form, render
from gateway.console.session import ConsoleUser
from gateway.evaluations import Evaluations
from gateway.tenancy import Admin, Directory
from store import AdapterVersion, Alias, AliasEvent, Canary, Store, Tenant
from store.errors import Conflict, InvalidRequest, NotFound
from store.settings import Settings

PAGE = "/console/aliases"
ADMIN_ONLY = {"admin_only": True}
HISTORY_SHOWN = 20  # the newest swaps of each alias on the page; the API returns them all
CANARIES_SHOWN = 5
# The gate's refusals (evaluations.require_passing, adapters.swap.erasure_reason): shown on
# the page, nothing promoted.
GATE_CODES = frozenset({"gate_refused", "eval_required", "trained_on_erased"})
DONE = {
    "promote": "Promoted.",
    "rollback": "Rolled back.",
    "retire": "Retired.",
    "canary-start": "Canary started.",
    "canary-stop": "Canary stopped.",
}
S = TypeVar("S", bound=msgspec.Struct)


# --- what the page shows ---------------------------------------------------------------------


@dataclass(frozen=True)
class AliasView:
    alias: Alias
    history: list[AliasEvent]  # newest first, at most HISTORY_SHOWN
    swaps: int  # all of them
    canary: ActiveCanary | None
    canaries: list[Canary]  # the newest CANARIES_SHOWN, newest first


@dataclass(frozen=True)
class VersionView:
    version: AdapterVersion
    aliases: list[str]  # the aliases serving it now
    job_id: str | None
    parent: str | None  # the version its job started from (when its row is in the graph)


@dataclass(frozen=True)
class Flash:
    kind: str  # "ok" | "error"
    text: str


async def chosen_tenant(user: ConsoleUser, admin: Admin, name: str | None) -> Tenant | None:
    """An admin picks any tenant (none yet: the picker only); a tenant session sees its own,
    and another tenant is not found, exactly as through the API."""
    if user.is_admin:
        return await admin.tenant(name) if name else None
    if name and name not in (user.tenant_name, user.tenant_id):
        raise NotFound(f"no tenant '{name}'", param="tenant")
    return await admin.tenant(user.tenant_id or "")


async def alias_view(store: Store, canaries: Canaries, tenant: Tenant, alias: Alias) -> AliasView:
    events = await store.alias_events(tenant.id, alias.name)
    report = await canaries.report(tenant, alias.name)
    history = sorted(report.history, key=lambda c: c.started_at, reverse=True)
    newest = list(reversed(events[-HISTORY_SHOWN:]))
    return AliasView(alias, newest, len(events), report.active, history[:CANARIES_SHOWN])


def version_views(
    versions: Sequence[AdapterVersion], aliases: Sequence[Alias], rows: Sequence[Row]
) -> list[VersionView]:
    """Newest first, each with the aliases that serve it and its job and parent."""
    serving: dict[str, list[str]] = {}
    for alias in aliases:
        if alias.target.adapter_version:
            serving.setdefault(alias.target.adapter_version, []).append(alias.name)
    parents = {row.version.id: row.parent for row in rows}
    return [
        VersionView(v, serving.get(v.id, []), job_id_of(v), parents.get(v.id))
        for v in sorted(versions, key=lambda v: v.created_at, reverse=True)
    ]


async def tenant_context(store: Store, canaries: Canaries, tenant: Tenant) -> dict[str, object]:
    aliases = await store.list_aliases(tenant.id)
    versions = await store.list_adapters(tenant.id)
    rows = await lineage_rows(store, versions)
    views = version_views(versions, aliases, rows)
    return {
        "aliases": [await alias_view(store, canaries, tenant, a) for a in aliases],
        "versions": views,
        "promotable": [v.version for v in views if v.version.status != "retired"],
        "graph": lineage_svg(rows),
    }


async def aliases_page(
    user: ConsoleUser,
    store: Store,
    admin: Admin,
    canaries: Canaries,
    tenant: Tenant | None,
    flashes: Sequence[Flash] = (),
    status: int = 200,
) -> Template:
    context: dict[str, object] = {
        "tenant": tenant,
        "tenants": await store.list_tenants() if user.is_admin else [],
        "flashes": [(f.kind, f.text) for f in flashes],
        "when": when,
    }
    if tenant is not None:
        context.update(await tenant_context(store, canaries, tenant))
    page = render(user, "aliases.html", PAGE, context)
    page.status_code = status
    return page


def when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def done_at(tenant: Tenant, action: str) -> Redirect:
    return back_to(f"{PAGE}?{urlencode({'tenant': tenant.name, 'done': action})}")


# --- reading the forms -----------------------------------------------------------------------


def parsed(kind: type[S], fields: Mapping[str, object]) -> S:
    """A form as the API's request body type, with the same limits (a 400 page otherwise)."""
    try:
        return msgspec.convert(fields, kind, str_keys=True)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"the form is not valid: {exc}") from None


def text(form: Mapping[str, str], name: str) -> str | None:
    return form.get(name, "").strip() or None


def promotion(form: Mapping[str, str]) -> Promote:
    fields = {"version": form.get("version", ""), "reason": text(form, "reason")}
    return parsed(Promote, {**fields, "force": form.get("force") in ("on", "1", "true")})


def canary_spec(form: Mapping[str, str]) -> CanarySpec:
    try:
        percent = float(form.get("percent", ""))
    except ValueError:
        raise InvalidRequest("percent must be a number above 0, at most 100") from None
    fields = {"version": form.get("version", ""), "reason": text(form, "reason")}
    return parsed(CanarySpec, {**fields, "percent": percent})


def reason_of(form: Mapping[str, str]) -> str | None:
    reason = text(form, "reason")
    if reason is not None and len(reason) > 1000:
        raise InvalidRequest("a reason is at most 1000 characters", param="reason")
    return reason


# --- handlers --------------------------------------------------------------------------------


@get("/aliases")
async def aliases(
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    admin: Injected[Admin],
    canaries: Injected[Canaries],
    tenant: FromQuery[str | None] = None,
    done: FromQuery[str | None] = None,
) -> Template:
    found = await chosen_tenant(console_user, admin, tenant)
    flashes = [Flash("ok", DONE[done])] if done in DONE else []
    return await aliases_page(console_user, store, admin, canaries, found, flashes)


@post("/aliases/{tenant:str}/{alias:str}/promote", opt=ADMIN_ONLY, status_code=303)
async def promote(
    request: AnyRequest,
    tenant: FromPath[str],
    alias: FromPath[str],
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    admin: Injected[Admin],
    canaries: Injected[Canaries],
    evaluations: Injected[Evaluations],
    registry: Injected[Registry],
    swapper: Injected[Swapper],
    directory: Injected[Directory],
) -> Redirect | Template:
    """Through the gate: a refusal shows the page again with its reasons (409), unchanged."""
    form = await read_form(request, console_user)
    found = await admin.tenant(tenant)
    data = promotion(form)
    try:
        await promote_alias(
            evaluations, registry, swapper, directory, found, alias, data, console_user.actor
        )
    except Conflict as refused:
        if refused.code not in GATE_CODES:
            raise
        flash = Flash("error", f"Not promoted: {refused.message}")
        return await aliases_page(console_user, store, admin, canaries, found, [flash], 409)
    return done_at(found, "promote")


@post("/aliases/{tenant:str}/{alias:str}/rollback", opt=ADMIN_ONLY, status_code=303)
async def rollback(
    request: AnyRequest,
    tenant: FromPath[str],
    alias: FromPath[str],
    console_user: Injected[ConsoleUser],
    admin: Injected[Admin],
    swapper: Injected[Swapper],
    directory: Injected[Directory],
) -> Redirect:
    form = await read_form(request, console_user)
    found = await admin.tenant(tenant)
    await rollback_alias(swapper, directory, found, alias, console_user.actor, reason_of(form))
    return done_at(found, "rollback")


@post("/aliases/{tenant:str}/{alias:str}/canary/start", opt=ADMIN_ONLY, status_code=303)
async def start_canary(
    request: AnyRequest,
    tenant: FromPath[str],
    alias: FromPath[str],
    console_user: Injected[ConsoleUser],
    admin: Injected[Admin],
    canaries: Injected[Canaries],
) -> Redirect:
    form = await read_form(request, console_user)
    found = await admin.tenant(tenant)
    await canaries.start(found, alias, canary_spec(form), console_user.actor)
    return done_at(found, "canary-start")


@post("/aliases/{tenant:str}/{alias:str}/canary/stop", opt=ADMIN_ONLY, status_code=303)
async def stop_canary(
    request: AnyRequest,
    tenant: FromPath[str],
    alias: FromPath[str],
    console_user: Injected[ConsoleUser],
    admin: Injected[Admin],
    canaries: Injected[Canaries],
) -> Redirect:
    form = await read_form(request, console_user)
    found = await admin.tenant(tenant)
    await canaries.stop(found, alias, console_user.actor, reason_of(form))
    return done_at(found, "canary-stop")


@post("/adapters/{tenant:str}/{version:str}/retire", opt=ADMIN_ONLY, status_code=303)
async def retire(
    request: AnyRequest,
    tenant: FromPath[str],
    version: FromPath[str],
    console_user: Injected[ConsoleUser],
    admin: Injected[Admin],
    store: Injected[Store],
    registry: Injected[Registry],
    adapters: Injected[AdapterPool],
    settings: Injected[Settings],
) -> Redirect:
    await read_form(request, console_user)
    found = await admin.tenant(tenant)
    await retire_version(store, registry, adapters, settings, found, version)
    return done_at(found, "retire")


ROUTES: list[HTTPRouteHandler] = [aliases, promote, rollback, start_canary, stop_canary, retire]
