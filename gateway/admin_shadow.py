"""Admin API for shadow evaluation: start (PUT), show with the pairs' summary (GET), stop."""

from __future__ import annotations

from litestar import Controller, delete, get, put
from litestar.params import FromPath, FromQuery, JSONBody

from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Json
from gateway.shadow import ShadowReport, Shadows, ShadowSpec
from gateway.tenancy import Admin
from store import Shadow

E = apidoc.admin


class ShadowController(Controller):
    path = "/admin/tenants/{tenant:str}/aliases/{alias:str}/shadow"

    @put(
        "/",
        status_code=201,
        summary="Mirror a share of an alias's traffic to a candidate",
        dto=Json[ShadowSpec],
        return_dto=None,
        responses=E(404, 409, 503),
    )
    async def start(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[ShadowSpec],
        admin: Injected[Admin],
        shadows: Injected[Shadows],
        actor: Injected[str],
    ) -> Shadow:
        """Send `share` of the alias's completed live requests to `version` too; its answers
        are stored beside the live ones and graded by an evals worker, never returned."""
        found = await admin.tenant(tenant)
        budget = {"max_inflight": data.max_inflight, "per_minute": data.per_minute}
        return await shadows.start(
            found, alias, data.version, share=data.share, **budget,
            checks=data.checks, actor=actor, reason=data.reason,
        )  # fmt: skip

    @get("/", summary="The alias's shadow and its pairs' summary", responses=E(404))
    async def show(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        admin: Injected[Admin],
        shadows: Injected[Shadows],
    ) -> ShadowReport:
        """The active shadow (or none), its candidate's wins/losses/ties, every shadow."""
        return await shadows.report(await admin.tenant(tenant), alias)

    @delete("/", status_code=200, summary="Stop the alias's shadow", responses=E(404, 503))
    async def stop(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        admin: Injected[Admin],
        shadows: Injected[Shadows],
        actor: Injected[str],
        reason: FromQuery[str | None] = None,
    ) -> Shadow:
        found = await admin.tenant(tenant)
        return await shadows.stop(found, alias, actor, (reason or "")[:1000] or None)
