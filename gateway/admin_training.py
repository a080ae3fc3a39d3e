"""Admin routes for the shared training machine: a tenant's quotas, its jobs, cancelling one."""

from __future__ import annotations

from litestar import Controller, Request, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from gateway.admin_api import admin_guard
from gateway.completions_api import page_limit
from gateway.finetuning_api import job_object
from gateway.quotas import QuotasBody, TenantShares
from gateway.runtime import Gateway

GW = NamedDependency[Gateway]


def admin_actor(request: Request[object, object, State]) -> str:
    """Who acts on the admin API: `admin`, or `admin:<name>` from X-Loopgate-Actor."""
    named = (request.headers.get("x-loopgate-actor") or "").strip()[:128]
    return f"admin:{named}" if named else "admin"


class TrainingController(Controller):
    path = "/admin/tenants/{tenant:str}"
    guards = [admin_guard]  # noqa: RUF012 - Litestar's declared attribute

    @get("/quotas")
    async def quotas(self, tenant: FromPath[str], gw: GW) -> TenantShares:
        """The tenant's own bounds and quotas, those in force (defaults filled in), its usage."""
        return await gw.quotas.shares((await gw.admin.tenant(tenant)).id)

    @put("/quotas")
    async def set_quotas(
        self, tenant: FromPath[str], data: JSONBody[QuotasBody], gw: GW
    ) -> TenantShares:
        """Replace the tenant's own values; null (or left out) means the gateway's default."""
        return await gw.quotas.save((await gw.admin.tenant(tenant)).id, data)

    @get("/fine_tuning/jobs")
    async def jobs(
        self, tenant: FromPath[str], gw: GW, request: Request[object, object, State]
    ) -> dict[str, object]:
        found = await gw.admin.tenant(tenant)
        params = request.query_params
        jobs, more = await gw.store.list_jobs(
            found.id, params.get("after"), page_limit(params.get("limit"))
        )
        return {"object": "list", "data": [job_object(j) for j in jobs], "has_more": more}

    @post("/fine_tuning/jobs/{job_id:str}/cancel", status_code=200)
    async def cancel(
        self,
        tenant: FromPath[str],
        job_id: FromPath[str],
        gw: GW,
        request: Request[object, object, State],
    ) -> dict[str, object]:
        """Cancel any of the tenant's jobs, queued or running; the job's events name the actor."""
        found = await gw.admin.tenant(tenant)
        return job_object(await gw.finetuning.cancel(found.id, job_id, admin_actor(request)))
