"""Admin API for canary releases: start, show (with live signals), stop, promote."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Json
from gateway.canary import Canaries, CanaryPromotion, CanaryReport, CanarySpec
from gateway.evaluations import Evaluations
from gateway.tenancy import Admin, Directory
from store import Canary, Tenant
from store.errors import InvalidRequest

E = apidoc.admin
SWAP = (404, 409, 413, 422, 503)


class Decision(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    force: bool = False  # skip the eval gate: needs a reason; recorded as a forced promotion


async def gated_reason(
    evaluations: Evaluations, canaries: Canaries, found: Tenant, alias: str, data: Decision
) -> str | None:
    """The same gate as any promotion: a passing eval run, or force with a reason."""
    if data.force:
        if not (data.reason or "").strip():
            raise InvalidRequest("a forced promotion needs a reason", param="reason")
        return data.reason
    version = canaries.active(found, alias).record.version
    run = await evaluations.require_passing(found, alias, version)
    return f"{data.reason or 'gate passed'} (eval {run.id})"


class CanaryController(Controller):
    path = "/admin/tenants/{tenant:str}/aliases/{alias:str}/canary"

    @post(
        "/",
        status_code=201,
        summary="Start a canary on an alias",
        dto=Json[CanarySpec],
        return_dto=None,
        responses=E(*SWAP),
    )
    async def start(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[CanarySpec],
        admin: Injected[Admin],
        canaries: Injected[Canaries],
        actor: Injected[str],
    ) -> Canary:
        """Send `percent` of the alias's traffic (sticky per end-user) to `version`."""
        return await canaries.start(await admin.tenant(tenant), alias, data, actor)

    @get("/", summary="The alias's canaries, with live signals", responses=E(404))
    async def show(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        admin: Injected[Admin],
        canaries: Injected[Canaries],
    ) -> CanaryReport:
        """The active canary with both arms' live signals, and every canary of the alias."""
        return await canaries.report(await admin.tenant(tenant), alias)

    @delete("/", status_code=200, summary="Stop the active canary", responses=E(404, 503))
    async def stop(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        admin: Injected[Admin],
        canaries: Injected[Canaries],
        actor: Injected[str],
        reason: FromQuery[str | None] = None,
    ) -> Canary:
        found = await admin.tenant(tenant)
        return await canaries.stop(found, alias, actor, (reason or "")[:1000] or None)

    @post(
        "/promote",
        status_code=200,
        summary="Promote the canary's version (gated)",
        dto=Json[Decision],
        return_dto=None,
        responses=E(*SWAP),
    )
    async def promote(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        admin: Injected[Admin],
        canaries: Injected[Canaries],
        evaluations: Injected[Evaluations],
        directory: Injected[Directory],
        actor: Injected[str],
        data: JSONBody[Decision | None] = None,
    ) -> CanaryPromotion:
        """Swap the canary's version onto the alias (live, zero failed requests); end it."""
        found = await admin.tenant(tenant)
        decision = data or Decision()
        reason = await gated_reason(evaluations, canaries, found, alias, decision)
        promotion = await canaries.promote(found, alias, actor, reason, forced=decision.force)
        directory.invalidate()
        return promotion
