"""Admin routes for the shared training machine: a tenant's quotas, its jobs, cancelling one."""

from __future__ import annotations

from litestar import Controller, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody

from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Json
from gateway.completions_api import PageLimit
from gateway.finetuning import FineTuning
from gateway.quotas import Quotas, QuotasBody, TenantShares
from gateway.responses import Job, PageOf
from gateway.tenancy import Admin
from store import Store

E = apidoc.admin


class TrainingController(Controller):
    path = "/admin/tenants/{tenant:str}"

    @get(
        "/quotas",
        summary="A tenant's fine-tuning bounds and quotas, and its usage",
        responses=E(404),
    )
    async def quotas(
        self, tenant: FromPath[str], admin: Injected[Admin], quotas: Injected[Quotas]
    ) -> TenantShares:
        """The tenant's own bounds and quotas, those in force (defaults filled in), its usage."""
        return await quotas.shares((await admin.tenant(tenant)).id)

    @put(
        "/quotas",
        summary="Replace a tenant's bounds and quotas (null: the default)",
        dto=Json[QuotasBody],
        return_dto=None,
        responses=E(404, 413, 503),
    )
    async def set_quotas(
        self,
        tenant: FromPath[str],
        data: JSONBody[QuotasBody],
        admin: Injected[Admin],
        quotas: Injected[Quotas],
    ) -> TenantShares:
        """Replace the tenant's own values; null (or left out) means the gateway's default."""
        return await quotas.save((await admin.tenant(tenant)).id, data)

    @get("/fine_tuning/jobs", summary="A tenant's fine-tuning jobs", responses=E(404))
    async def jobs(
        self,
        tenant: FromPath[str],
        admin: Injected[Admin],
        store: Injected[Store],
        after: FromQuery[str | None] = None,
        limit: PageLimit = 20,
    ) -> PageOf[Job]:
        found = await admin.tenant(tenant)
        jobs, more = await store.list_jobs(found.id, after, limit)
        return PageOf(data=[Job.of(j) for j in jobs], has_more=more)

    @post(
        "/fine_tuning/jobs/{job_id:str}/cancel",
        status_code=200,
        summary="Cancel a tenant's job (queued or running); its events record the actor",
        responses=E(404, 503),
    )
    async def cancel(
        self,
        tenant: FromPath[str],
        job_id: FromPath[str],
        admin: Injected[Admin],
        finetuning: Injected[FineTuning],
        admin_actor: Injected[str],
    ) -> Job:
        """Cancel any of the tenant's jobs, queued or running; the job's events name the actor."""
        found = await admin.tenant(tenant)
        return Job.of(await finetuning.cancel(found.id, job_id, admin_actor))
