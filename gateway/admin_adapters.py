"""Admin API for adapters: register, list, show, promote, rollback, retire, delete, placements."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from adapters.registry import Transition, next_status
from adapters.swap import SwapReport, erasure_reason
from gateway.admin_api import admin_guard
from gateway.runtime import Gateway
from store import AdapterVersion, Alias, AliasEvent
from store.errors import Conflict, InvalidRequest

GW = NamedDependency[Gateway]
ACTOR_HEADER = "x-loopgate-actor"
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
    placements: list[dict[str, str | int | bool]]


def _actor(request: Request[object, object, State]) -> str:
    return (request.headers.get(ACTOR_HEADER) or "admin")[:128]


class AdapterController(Controller):
    path = "/admin/tenants/{tenant:str}"
    guards = [admin_guard]  # noqa: RUF012 - Litestar's declared attribute

    @post("/adapters", status_code=201, request_max_body_size=MAX_UPLOAD)
    async def register(
        self,
        tenant: FromPath[str],
        request: Request[object, object, State],
        gw: GW,
        name: FromQuery[str] = "adapter",
        sha256: FromQuery[str | None] = None,
    ) -> AdapterVersion:
        """Upload a .tar.gz or .zip of a peft adapter folder (optionally with its SHA-256)."""
        found = await gw.admin.tenant(tenant)
        data = await request.body()
        return await gw.registry.import_archive(
            found, data, name=name, created_by=f"upload:{_actor(request)}", expected_sha256=sha256
        )

    @get("/adapters")
    async def list_adapters(self, tenant: FromPath[str], gw: GW) -> dict[str, object]:
        found = await gw.admin.tenant(tenant)
        return {"object": "list", "data": await gw.store.list_adapters(found.id)}

    @get("/adapters/{version:str}")
    async def show(self, tenant: FromPath[str], version: FromPath[str], gw: GW) -> AdapterDetail:
        found = await gw.admin.tenant(tenant)
        record = await gw.registry.get(found, version)
        placements = [
            {
                "backend": p.backend.name,
                "engine_name": p.engine_name,
                "state": p.state.value,
                "inflight": p.inflight,
                "served": p.served,
                "pinned": p.pinned,
            }
            for p in gw.adapters.placements_of(record.id)
        ]
        return AdapterDetail(record, await gw.store.aliases_to(record.id), placements)

    @post("/adapters/{version:str}/retire", status_code=200)
    async def retire(self, tenant: FromPath[str], version: FromPath[str], gw: GW) -> AdapterVersion:
        found = await gw.admin.tenant(tenant)
        record = await gw.registry.get(found, version)
        if await gw.store.aliases_to(record.id):
            raise Conflict("an alias still serves this version; promote another or roll back first")
        await gw.store.set_adapter_status(record.id, next_status(record.status, Transition.RETIRE))
        await gw.adapters.retire(record.id, gw.settings.swap_drain_timeout_s)
        return await gw.registry.get(found, version)

    @delete("/adapters/{version:str}", status_code=200)
    async def delete_version(
        self, tenant: FromPath[str], version: FromPath[str], gw: GW
    ) -> AdapterVersion:
        found = await gw.admin.tenant(tenant)
        return await gw.registry.delete(found, version)

    @post("/aliases/{alias:str}/promote", status_code=200)
    async def promote(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[Promote],
        gw: GW,
        request: Request[object, object, State],
    ) -> SwapReport:
        found = await gw.admin.tenant(tenant)
        reason = data.reason
        if data.force:
            if not (data.reason or "").strip():
                raise InvalidRequest("a forced promotion needs a reason", param="reason")
        else:
            version = await gw.registry.get(found, data.version)
            erasure_reason(version, forced=False, reason=data.reason)  # before the gate: clearer
            run = await gw.evaluations.require_passing(found, alias, version.id)
            reason = f"{data.reason or 'gate passed'} (eval {run.id})"
        report = await gw.swapper.promote(
            found,
            alias,
            data.version,
            actor=_actor(request),
            reason=reason,
            require_change=data.require_change,
            forced=data.force,
        )
        gw.directory.invalidate()
        return report

    @post("/aliases/{alias:str}/rollback", status_code=200)
    async def rollback(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[Rollback],
        gw: GW,
        request: Request[object, object, State],
    ) -> SwapReport:
        found = await gw.admin.tenant(tenant)
        report = await gw.swapper.rollback(found, alias, actor=_actor(request), reason=data.reason)
        gw.directory.invalidate()
        return report

    @get("/aliases/{alias:str}/history")
    async def history(
        self, tenant: FromPath[str], alias: FromPath[str], gw: GW
    ) -> list[AliasEvent]:
        found = await gw.admin.tenant(tenant)
        return await gw.store.alias_events(found.id, alias)


@get("/admin/backends", guards=[admin_guard])
async def backends(gw: GW) -> dict[str, object]:
    """Each replica: readiness, requests in flight, and the adapters it holds."""
    data = [
        {
            "name": b.name,
            "ready": b.ready,
            "inflight": b.inflight,
            "adapters": [
                {
                    "version": p.version_id,
                    "engine_name": p.engine_name,
                    "state": p.state.value,
                    "inflight": p.inflight,
                    "served": p.served,
                    "pinned": p.pinned,
                }
                for p in gw.adapters.on(b).values()
            ],
        }
        for b in gw.pool.backends
    ]
    return {
        "object": "list",
        "data": data,
        "loads": gw.adapters.loads,
        "unloads": gw.adapters.unloads,
    }
