"""The console's Tenants: keys, limits and budgets with usage, gate policy, opt-outs, erasure.

Every read and every action goes through the services the admin API uses (`gateway.admin_api`,
`admin_limits.LimitSets`, `quotas.Quotas`, `evaluations.Evaluations`, `erasure.DataErasure`),
and a form is validated by the API's own body struct, so a value the API refuses is a 400 here.
A tenant's session sees its own tenant only, read-only; another tenant is "not found".
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import msgspec
from litestar import get, post
from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template

from gateway import admin_api, limits
from gateway.access import Injected
from gateway.admin_api import CreateKey, CreateTenant, Erase, KeyInfo, OptOut, TenantPolicy
from gateway.admin_limits import LimitsBody, LimitSets
from gateway.bodies import decode_body
from gateway.console.pages import AnyRequest, back_to, read_form, render
from gateway.console.session import ConsoleUser, visible_tenant
from gateway.erasure import DataErasure
from gateway.evaluations import Evaluations, PolicyIn
from gateway.quotas import QUOTA_OF, Quotas, QuotasBody, TenantShares
from gateway.responses import Erased
from gateway.tenancy import Admin, Directory, IssuedKey
from store import LimitSet, Store, Tenant
from store.errors import InvalidRequest, NotFound

PAGE = "/console/tenants"
ADMIN_ONLY = {"admin_only": True}
OPTOUTS_SHOWN = 100
S = TypeVar("S", bound=msgspec.Struct)
# ?done=<what> after an action: the line the page shows.
DONE = {
    "revoked": "Key revoked.",
    "limits": "Limits saved.",
    "quotas": "Quotas saved.",
    "gate-policy": "Gate policy saved.",
    "policy": "Data settings saved.",
    "opt-out": "End user opted out of training.",
}


@dataclass(frozen=True)
class Meter:
    """One limit's counter in its current window: what it allows and what is used."""

    kind: str  # requests | tokens | budget
    limit: int
    used: int
    resets_at: str

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.used / self.limit)) if self.limit else 0


@dataclass(frozen=True)
class KeyRow:
    key: KeyInfo
    created: str
    revoked: str | None
    limits: LimitSet
    counters: list[Meter]


@dataclass(frozen=True)
class Quota:
    """One of the training machine's quotas: in force (own value or default) and used."""

    name: str
    own: int | None
    in_force: int
    used: int | None  # None: a bound on each job, not a count


@dataclass(frozen=True)
class TenantView:
    tenant: Tenant
    created: str
    keys: list[KeyRow]
    limits: LimitSet
    counters: list[Meter]
    quotas: list[Quota]
    policy_json: str
    optouts: list[str]
    optout_count: int


@dataclass(frozen=True)
class TenantServices:
    """What the Tenants pages read and act through (the admin API's services)."""

    admin: Admin
    store: Store
    directory: Directory
    limit_sets: LimitSets
    quotas: Quotas
    evaluations: Evaluations


def provide_services(
    admin: Injected[Admin],
    store: Injected[Store],
    directory: Injected[Directory],
    limit_sets: Injected[LimitSets],
    quotas: Injected[Quotas],
    evaluations: Injected[Evaluations],
) -> TenantServices:
    return TenantServices(admin, store, directory, limit_sets, quotas, evaluations)


SERVICES = {"tenants": Provide(provide_services, sync_to_thread=False)}
Services: TypeAlias = Injected[TenantServices]
User: TypeAlias = Injected[ConsoleUser]


def when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def form_body(fields: Mapping[str, str], kind: type[S]) -> S:
    """A form as the API's body struct: an empty field is left out (null, the default); values
    are converted from text, then checked by the struct's own constraints (a 400 otherwise)."""
    values = {}
    for name in kind.__struct_fields__:
        value = fields.get(name, "").strip()
        if value:
            values[name] = value
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid request: {exc}") from None


async def visible(user: ConsoleUser, admin: Admin, name: str) -> Tenant:
    """The tenant named, if this person may see it; another tenant's is 'not found' as well."""
    tenant = await admin.tenant(name)
    if not visible_tenant(user, tenant.id):
        raise NotFound(f"no tenant '{name}'", param="tenant")
    return tenant


async def tenants_of(user: ConsoleUser, services: TenantServices) -> list[Tenant]:
    if user.is_admin:
        return list(await services.store.list_tenants())
    return [await services.admin.tenant(user.tenant_id or "")]


async def counters(store: Store, limit_set: LimitSet, tenant: Tenant) -> list[Meter]:
    now = await limits.standing(store, limit_set, tenant.name)
    return [Meter(c.kind, c.charge.limit, used, when(c.resets_at)) for c, used in now]


async def key_row(services: TenantServices, tenant: Tenant, key: KeyInfo) -> KeyRow:
    limit_set = await services.limit_sets.load(tenant.id, key.id)
    used = await counters(services.store, limit_set, tenant) if key.revoked_at is None else []
    return KeyRow(key, when(key.created_at), when(key.revoked_at) or None, limit_set, used)


def quota_rows(shares: TenantShares) -> list[Quota]:
    counted = {quota: count for count, quota in QUOTA_OF.items()}
    rows = []
    for name in QuotasBody.__struct_fields__:
        count = counted.get(name)
        used = None if count is None else getattr(shares.usage, count)
        rows.append(Quota(name, getattr(shares.own, name), getattr(shares.in_force, name), used))
    return rows


async def tenant_view(services: TenantServices, tenant: Tenant) -> TenantView:
    keys = [KeyInfo.of(k) for k in await services.store.list_keys(tenant.id)]
    limit_set = await services.limit_sets.load(tenant.id, None)
    policy = await services.evaluations.policy(tenant.id)
    optouts = sorted(await services.store.list_optouts(tenant.id))
    return TenantView(
        tenant=tenant,
        created=when(tenant.created_at),
        keys=[await key_row(services, tenant, k) for k in keys],
        limits=limit_set,
        counters=await counters(services.store, limit_set, tenant),
        quotas=quota_rows(await services.quotas.shares(tenant.id)),
        policy_json=msgspec.json.format(msgspec.json.encode(policy), indent=2).decode(),
        optouts=optouts[:OPTOUTS_SHOWN],
        optout_count=len(optouts),
    )


async def tenant_page(
    user: ConsoleUser,
    services: TenantServices,
    tenant: Tenant,
    *,
    done: str | None = None,
    issued: IssuedKey | None = None,
    erased: Erased | None = None,
) -> Template:
    flashes = [("ok", DONE[done])] if done in DONE else []
    context = {
        "view": await tenant_view(services, tenant),
        "flashes": flashes,
        "issued": issued,
        "erased": erased,
        "limit_fields": limit_fields(),
    }
    return render(user, "tenant.html", PAGE, context)


def limit_fields() -> list[str]:
    return [f for f in LimitsBody.__struct_fields__ if f != "budget_period"]


def to_tenant(tenant: Tenant, done: str) -> Redirect:
    return back_to(f"{PAGE}/{tenant.name}?done={done}")


# -- pages -------------------------------------------------------------------------------------


@get("/tenants", dependencies=SERVICES)
async def tenant_list(console_user: User, tenants: Services) -> Template:
    rows = [(t, when(t.created_at)) for t in await tenants_of(console_user, tenants)]
    return render(console_user, "tenants.html", PAGE, {"rows": rows})


@get("/tenants/{name:str}", dependencies=SERVICES)
async def tenant_detail(
    console_user: User, tenants: Services, name: FromPath[str], done: FromQuery[str | None] = None
) -> Template:
    tenant = await visible(console_user, tenants.admin, name)
    return await tenant_page(console_user, tenants, tenant, done=done)


# -- actions (admins) --------------------------------------------------------------------------


@post("/tenants", opt=ADMIN_ONLY, status_code=303, dependencies=SERVICES)
async def create_tenant(request: AnyRequest, console_user: User, tenants: Services) -> Redirect:
    body = form_body(await read_form(request, console_user), CreateTenant)
    tenant = await admin_api.create_tenant(tenants.admin, tenants.directory, body.name)
    return back_to(f"{PAGE}/{tenant.name}")


@post("/tenants/{name:str}/keys", opt=ADMIN_ONLY, status_code=200, dependencies=SERVICES)
async def create_key(
    request: AnyRequest, console_user: User, tenants: Services, name: FromPath[str]
) -> Template:
    """The new key's plaintext is on this answer only: never stored, never in a URL."""
    fields = await read_form(request, console_user)
    tenant = await tenants.admin.tenant(name)
    issued = await tenants.admin.issue_key(tenant.id, form_body(fields, CreateKey).name)
    return await tenant_page(console_user, tenants, tenant, issued=issued)


@post(
    "/tenants/{name:str}/keys/{key_id:str}/revoke",
    opt=ADMIN_ONLY,
    status_code=303,
    dependencies=SERVICES,
)
async def revoke_key(
    request: AnyRequest,
    console_user: User,
    tenants: Services,
    name: FromPath[str],
    key_id: FromPath[str],
) -> Redirect:
    await read_form(request, console_user)
    tenant = await tenants.admin.tenant(name)
    await tenants.limit_sets.scope(tenant.id, key_id)  # 404 unless the key is the tenant's
    await admin_api.revoke_key(tenants.store, tenants.directory, key_id)
    return to_tenant(tenant, "revoked")


@post("/tenants/{name:str}/limits", opt=ADMIN_ONLY, status_code=303, dependencies=SERVICES)
async def save_limits(
    request: AnyRequest, console_user: User, tenants: Services, name: FromPath[str]
) -> Redirect:
    """The tenant's limits, or one key's (the form's `key_id`): the set is replaced."""
    fields = await read_form(request, console_user)
    tenant = await tenants.admin.tenant(name)
    body = form_body(fields, LimitsBody)
    await tenants.limit_sets.save(tenant.id, fields.get("key_id") or None, body)
    return to_tenant(tenant, "limits")


@post("/tenants/{name:str}/quotas", opt=ADMIN_ONLY, status_code=303, dependencies=SERVICES)
async def save_quotas(
    request: AnyRequest, console_user: User, tenants: Services, name: FromPath[str]
) -> Redirect:
    fields = await read_form(request, console_user)
    tenant = await tenants.admin.tenant(name)
    await tenants.quotas.save(tenant.id, form_body(fields, QuotasBody))
    return to_tenant(tenant, "quotas")


@post("/tenants/{name:str}/gate-policy", opt=ADMIN_ONLY, status_code=303, dependencies=SERVICES)
async def save_gate_policy(
    request: AnyRequest, console_user: User, tenants: Services, name: FromPath[str]
) -> Redirect:
    """The policy as JSON, decoded and checked exactly as PUT .../gate-policy does."""
    fields = await read_form(request, console_user)
    tenant = await tenants.admin.tenant(name)
    policy = decode_body(fields.get("policy", "").encode(), PolicyIn)
    await tenants.evaluations.set_policy(tenant.id, policy)
    return to_tenant(tenant, "gate-policy")


@post("/tenants/{name:str}/policy", opt=ADMIN_ONLY, status_code=303, dependencies=SERVICES)
async def save_data_policy(
    request: AnyRequest, console_user: User, tenants: Services, name: FromPath[str]
) -> Redirect:
    """Store by default, PII redaction, retention (an empty retention: keep forever)."""
    fields = await read_form(request, console_user)
    keep_forever = "true" if not fields.get("retention_days", "").strip() else "false"
    body = form_body({**fields, "keep_forever": keep_forever}, TenantPolicy)
    s = tenants
    tenant = await admin_api.set_tenant_policy(s.admin, s.store, s.directory, name, body)
    return to_tenant(tenant, "policy")


@post("/tenants/{name:str}/opt-out", opt=ADMIN_ONLY, status_code=303, dependencies=SERVICES)
async def opt_out(
    request: AnyRequest, console_user: User, tenants: Services, name: FromPath[str]
) -> Redirect:
    fields = await read_form(request, console_user)
    tenant = await tenants.admin.tenant(name)
    await tenants.store.opt_out(tenant.id, form_body(fields, OptOut).end_user)
    return to_tenant(tenant, "opt-out")


@post("/tenants/{name:str}/erase", opt=ADMIN_ONLY, status_code=200, dependencies=SERVICES)
async def erase(
    request: AnyRequest,
    console_user: User,
    tenants: Services,
    erasure: Injected[DataErasure],
    name: FromPath[str],
) -> Template:
    """Erase as POST /admin/tenants/{t}/erase does, once the tenant's name is typed to confirm."""
    fields = await read_form(request, console_user)
    tenant = await tenants.admin.tenant(name)
    body = form_body(fields, Erase)
    check_confirmation(tenant, fields.get("confirm", ""))
    report = await erasure.erase(tenant.id, body.end_user, console_user.actor)
    return await tenant_page(console_user, tenants, tenant, erased=Erased.of(report))


def check_confirmation(tenant: Tenant, typed: str) -> None:
    if typed.strip() != tenant.name:
        raise InvalidRequest(
            f"nothing was erased: type the tenant's name ('{tenant.name}') to confirm",
            param="confirm",
        )


ROUTES: list[HTTPRouteHandler] = [
    tenant_list,
    tenant_detail,
    create_tenant,
    create_key,
    revoke_key,
    save_limits,
    save_quotas,
    save_gate_policy,
    save_data_policy,
    opt_out,
    erase,
]
