"""Admin API for adapters: register, list, show, promote, rollback, retire, delete, placements."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, JSONBody

from adapters.placement import AdapterPool
from adapters.registry import Registry, Transition, next_status
from adapters.swap import Swapper, SwapReport, erasure_reason
from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Json
from gateway.evaluations import Evaluations
from gateway.responses import HeldAdapter, ListOf, Placement, Replicas, replica
from gateway.tenancy import Admin, Directory
from replicas.pool import BackendPool
from store import AdapterVersion, Alias, AliasEvent, Store, Tenant
from store.errors import Conflict, InvalidRequest
from store.settings import Settings

E = apidoc.admin
SWAP = (404, 409, 413, 422, 503)
ARCHIVE = {"application/octet-stream": apidoc.schema({"type": "string", "format": "binary"})}
MAX_UPLOAD = 1024 * 1024 * 1024  # the per-settings cap is enforced by the registry


class Promote(msgspec.Struct, forbid_unknown_fields=True):
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    require_change: bool = False
    force: bool = False  # skip the eval gate: needs a reason; recorded as a forced promotion


class Rollback(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


class AdapterDetail(msgspec.Struct):
    version: AdapterVersion
    aliases: list[Alias]
    placements: list[Placement]


def placements(adapters: AdapterPool, version_id: str) -> list[Placement]:
    return [
        Placement(p.backend.name, p.engine_name, p.state.value, p.inflight, p.served, p.pinned)
        for p in adapters.placements_of(version_id)
    ]


async def gated_reason(
    evaluations: Evaluations, registry: Registry, found: Tenant, alias: str, data: Promote
) -> str | None:
    """A forced promotion needs a reason; any other needs a passing eval run (named)."""
    if data.force:
        if not (data.reason or "").strip():
            raise InvalidRequest("a forced promotion needs a reason", param="reason")
        return data.reason
    version = await registry.get(found, data.version)
    erasure_reason(version, forced=False, reason=data.reason)  # before the gate: clearer
    run = await evaluations.require_passing(found, alias, version.id)
    return f"{data.reason or 'gate passed'} (eval {run.id})"


async def promote_alias(
    evaluations: Evaluations,
    registry: Registry,
    swapper: Swapper,
    directory: Directory,
    found: Tenant,
    alias: str,
    data: Promote,
    actor: str,
) -> SwapReport:
    """Swap an alias onto a version through the gate (or forced, with a reason): the admin API
    and the console promote through here."""
    reason = await gated_reason(evaluations, registry, found, alias, data)
    report = await swapper.promote(
        found,
        alias,
        data.version,
        actor=actor,
        reason=reason,
        require_change=data.require_change,
        forced=data.force,
    )
    directory.invalidate()
    return report


async def rollback_alias(
    swapper: Swapper,
    directory: Directory,
    found: Tenant,
    alias: str,
    actor: str,
    reason: str | None,
) -> SwapReport:
    """Swap an alias back to what it served before its last promote or rollback."""
    report = await swapper.rollback(found, alias, actor=actor, reason=reason)
    directory.invalidate()
    return report


async def retire_version(
    store: Store,
    registry: Registry,
    adapters: AdapterPool,
    settings: Settings,
    found: Tenant,
    version: str,
) -> AdapterVersion:
    """Retire a version no alias serves: unloaded from every replica once its requests drain."""
    record = await registry.get(found, version)
    if await store.aliases_to(record.id):
        raise Conflict("an alias still serves this version; promote another or roll back first")
    await store.set_adapter_status(record.id, next_status(record.status, Transition.RETIRE))
    await adapters.retire(record.id, settings.swap_drain_timeout_s)
    return await registry.get(found, version)


class AdapterController(Controller):
    path = "/admin/tenants/{tenant:str}"

    @post(
        "/adapters",
        status_code=201,
        request_max_body_size=MAX_UPLOAD,
        summary="Register an adapter archive (.tar.gz or .zip)",
        operation_class=apidoc.raw_body(ARCHIVE),
        responses=E(404, 409, 413, 422, 503),
    )
    async def register(
        self,
        tenant: FromPath[str],
        request: Request[object, object, State],
        admin: Injected[Admin],
        registry: Injected[Registry],
        actor: Injected[str],
        name: FromQuery[str] = "adapter",
        sha256: FromQuery[str | None] = None,
    ) -> AdapterVersion:
        """Upload a .tar.gz or .zip of a peft adapter folder (optionally with its SHA-256)."""
        found = await admin.tenant(tenant)
        return await registry.import_archive(
            found,
            await request.body(),
            name=name,
            created_by=f"upload:{actor}",
            expected_sha256=sha256,
        )

    @get("/adapters", summary="List adapter versions", responses=E(404))
    async def list_adapters(
        self, tenant: FromPath[str], admin: Injected[Admin], store: Injected[Store]
    ) -> ListOf[AdapterVersion]:
        found = await admin.tenant(tenant)
        return ListOf(data=list(await store.list_adapters(found.id)))

    @get(
        "/adapters/{version:str}",
        summary="An adapter version and where it is loaded",
        responses=E(404),
    )
    async def show(
        self,
        tenant: FromPath[str],
        version: FromPath[str],
        admin: Injected[Admin],
        registry: Injected[Registry],
        store: Injected[Store],
        adapters: Injected[AdapterPool],
    ) -> AdapterDetail:
        record = await registry.get(await admin.tenant(tenant), version)
        aliases = list(await store.aliases_to(record.id))
        return AdapterDetail(record, aliases, placements(adapters, record.id))

    @post(
        "/adapters/{version:str}/retire",
        status_code=200,
        summary="Retire an adapter version",
        responses=E(404, 409, 503),
    )
    async def retire(
        self,
        tenant: FromPath[str],
        version: FromPath[str],
        admin: Injected[Admin],
        registry: Injected[Registry],
        store: Injected[Store],
        adapters: Injected[AdapterPool],
        settings: Injected[Settings],
    ) -> AdapterVersion:
        found = await admin.tenant(tenant)
        return await retire_version(store, registry, adapters, settings, found, version)

    @delete(
        "/adapters/{version:str}",
        status_code=200,
        summary="Delete a retired adapter version",
        responses=E(404, 409, 503),
    )
    async def delete_version(
        self,
        tenant: FromPath[str],
        version: FromPath[str],
        admin: Injected[Admin],
        registry: Injected[Registry],
    ) -> AdapterVersion:
        return await registry.delete(await admin.tenant(tenant), version)

    @post(
        "/aliases/{alias:str}/promote",
        status_code=200,
        summary="Swap an alias onto a version (gated)",
        dto=Json[Promote],
        return_dto=None,
        responses=E(*SWAP),
    )
    async def promote(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[Promote],
        admin: Injected[Admin],
        registry: Injected[Registry],
        evaluations: Injected[Evaluations],
        swapper: Injected[Swapper],
        directory: Injected[Directory],
        actor: Injected[str],
    ) -> SwapReport:
        found = await admin.tenant(tenant)
        return await promote_alias(
            evaluations, registry, swapper, directory, found, alias, data, actor
        )

    @post(
        "/aliases/{alias:str}/rollback",
        status_code=200,
        summary="Swap an alias back to its last version",
        dto=Json[Rollback],
        return_dto=None,
        responses=E(*SWAP),
    )
    async def rollback(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        admin: Injected[Admin],
        swapper: Injected[Swapper],
        directory: Injected[Directory],
        actor: Injected[str],
        data: JSONBody[Rollback | None] = None,
    ) -> SwapReport:
        found = await admin.tenant(tenant)
        reason = (data or Rollback()).reason
        return await rollback_alias(swapper, directory, found, alias, actor, reason)

    @get("/aliases/{alias:str}/history", summary="An alias's swaps", responses=E(404))
    async def history(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        admin: Injected[Admin],
        store: Injected[Store],
    ) -> list[AliasEvent]:
        found = await admin.tenant(tenant)
        return list(await store.alias_events(found.id, alias))


@get("/admin/backends", summary="Engine replicas and the adapters they hold", responses=E())
async def backends(pool: Injected[BackendPool], adapters: Injected[AdapterPool]) -> Replicas:
    """Each replica: readiness, circuit, requests in flight, and the adapters it holds."""
    return replicas_of(pool, adapters)


def replicas_of(pool: BackendPool, adapters: AdapterPool) -> Replicas:
    """The replicas as `GET /admin/backends` and the console's overview show them."""
    data = [
        replica(
            b,
            [
                HeldAdapter(
                    p.version_id, p.engine_name, p.state.value, p.inflight, p.served, p.pinned
                )
                for p in adapters.on(b).values()
            ],
        )
        for b in pool.backends
    ]
    return Replicas(data=data, loads=adapters.loads, unloads=adapters.unloads)
