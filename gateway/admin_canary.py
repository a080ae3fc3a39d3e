"""Admin API for canary releases: start, show (with live signals), stop, promote."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from gateway.admin_adapters import ACTOR_HEADER
from gateway.admin_api import admin_guard
from gateway.canary import CanaryPromotion, CanaryReport, CanarySpec
from gateway.runtime import Gateway
from store import Canary
from store.errors import InvalidRequest

GW = NamedDependency[Gateway]


class Decision(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    force: bool = False  # skip the eval gate: needs a reason; recorded as a forced promotion


def _actor(request: Request[object, object, State]) -> str:
    return (request.headers.get(ACTOR_HEADER) or "admin")[:128]


class CanaryController(Controller):
    path = "/admin/tenants/{tenant:str}/aliases/{alias:str}/canary"
    guards = [admin_guard]  # noqa: RUF012 - Litestar's declared attribute

    @post("/", status_code=201)
    async def start(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[CanarySpec],
        gw: GW,
        request: Request[object, object, State],
    ) -> Canary:
        """Send `percent` of the alias's traffic (sticky per end-user) to `version`."""
        found = await gw.admin.tenant(tenant)
        return await gw.canaries.start(found, alias, data, _actor(request))

    @get("/")
    async def show(self, tenant: FromPath[str], alias: FromPath[str], gw: GW) -> CanaryReport:
        """The active canary with both arms' live signals, and every canary of the alias."""
        found = await gw.admin.tenant(tenant)
        return await gw.canaries.report(found, alias)

    @delete("/", status_code=200)
    async def stop(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        gw: GW,
        request: Request[object, object, State],
        reason: FromQuery[str | None] = None,
    ) -> Canary:
        found = await gw.admin.tenant(tenant)
        return await gw.canaries.stop(found, alias, _actor(request), (reason or "")[:1000] or None)

    @post("/promote", status_code=200)
    async def promote(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[Decision],
        gw: GW,
        request: Request[object, object, State],
    ) -> CanaryPromotion:
        """Swap the canary's version onto the alias (live, zero failed requests); end it.
        The same gate as any promotion: a passing eval run, or force with a reason."""
        found = await gw.admin.tenant(tenant)
        reason = data.reason
        if data.force and not (reason or "").strip():
            raise InvalidRequest("a forced promotion needs a reason", param="reason")
        if not data.force:
            version = gw.canaries.active(found, alias).record.version
            run = await gw.evaluations.require_passing(found, alias, version)
            reason = f"{reason or 'gate passed'} (eval {run.id})"
        promotion = await gw.canaries.promote(
            found, alias, _actor(request), reason, forced=data.force
        )
        gw.directory.invalidate()
        return promotion
