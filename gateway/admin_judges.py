"""Admin routes for a tenant's LLM judge: set, show, delete, and one judge call (thin handlers)."""

from __future__ import annotations

from litestar import Controller, Request, delete, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from evals.judging import JudgeAsk, JudgeReply
from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Json
from gateway.judges import JudgeIn, JudgeInfo, Judges
from gateway.request_id import request_id
from gateway.tenancy import Admin

E = apidoc.admin
AnyRequest = Request[object, object, State]


class JudgeController(Controller):
    path = "/admin/tenants/{tenant:str}/judge"

    @put(
        "/",
        status_code=200,
        summary="Set a tenant's LLM judge (an alias, or an external endpoint and its key)",
        dto=Json[JudgeIn],
        return_dto=None,
        responses=E(404, 413, 503),
    )
    async def set_judge(
        self,
        tenant: FromPath[str],
        data: JSONBody[JudgeIn],
        admin: Injected[Admin],
        judges: Injected[Judges],
    ) -> JudgeInfo:
        return await judges.set(await admin.tenant(tenant), data)

    @get("/", summary="A tenant's LLM judge (its API key masked)", responses=E(404))
    async def show_judge(
        self, tenant: FromPath[str], admin: Injected[Admin], judges: Injected[Judges]
    ) -> JudgeInfo:
        return await judges.info(await admin.tenant(tenant))

    @delete("/", summary="Remove a tenant's LLM judge", responses=E(404, 503))
    async def delete_judge(
        self, tenant: FromPath[str], admin: Injected[Admin], judges: Injected[Judges]
    ) -> None:
        await judges.delete(await admin.tenant(tenant))

    @post(
        "/replies",
        status_code=200,
        summary="One judge reply to a prompt (an evals worker's)",
        dto=Json[JudgeAsk],
        return_dto=None,
        responses=E(403, 404, 409, 413, 429, 502, 503, 504),
    )
    async def reply(
        self,
        request: AnyRequest,
        tenant: FromPath[str],
        data: JSONBody[JudgeAsk],
        admin: Injected[Admin],
        judges: Injected[Judges],
    ) -> JudgeReply:
        found = await admin.tenant(tenant)
        return await judges.reply(found, data, request_id(request.scope))
