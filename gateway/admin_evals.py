"""Admin API for evals: a tenant's gate policy, eval runs and their reports (thin handlers)."""

from __future__ import annotations

from pathlib import Path

from litestar import Controller, get, post, put
from litestar.params import FromPath, JSONBody
from litestar.response import File

from evals.loop_record import Created, LoopDataset, LoopJob
from evals.spec import AnswerReply, AnswerRequest
from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Json
from gateway.evaluations import Evaluations, PolicyIn, StartEval
from gateway.loop import LoopRun, Loops, StartLoop
from gateway.responses import REPORT_FILES, EvalRunInfo, ListOf
from gateway.tenancy import Admin
from store import EvalResult, EvalRun, Store
from store.errors import NotFound

E = apidoc.admin
REPORT = apidoc.answers(200, {m: apidoc.schema({"type": "string"}) for m in REPORT_FILES.values()})


class EvalController(Controller):
    path = "/admin/tenants/{tenant:str}"

    @get("/gate-policy", summary="A tenant's promotion gate", responses=E(404))
    async def get_policy(
        self,
        tenant: FromPath[str],
        admin: Injected[Admin],
        evaluations: Injected[Evaluations],
    ) -> PolicyIn:
        return await evaluations.policy((await admin.tenant(tenant)).id)

    @put(
        "/gate-policy",
        status_code=200,
        summary="Set a tenant's promotion gate",
        dto=Json[PolicyIn],
        return_dto=None,
        responses=E(404, 413, 503),
    )
    async def set_policy(
        self,
        tenant: FromPath[str],
        data: JSONBody[PolicyIn],
        admin: Injected[Admin],
        evaluations: Injected[Evaluations],
    ) -> PolicyIn:
        return await evaluations.set_policy((await admin.tenant(tenant)).id, data)

    @post(
        "/evals",
        status_code=202,
        summary="Start an eval run",
        dto=Json[StartEval],
        return_dto=None,
        responses=E(404, 409, 413, 429, 503),
    )
    async def start(
        self,
        tenant: FromPath[str],
        data: JSONBody[StartEval],
        admin: Injected[Admin],
        evaluations: Injected[Evaluations],
        actor: Injected[str],
    ) -> EvalRunInfo:
        found = await admin.tenant(tenant)
        return EvalRunInfo.of(await evaluations.start(found, data, actor))

    @get("/evals", summary="List eval runs", responses=E(404))
    async def list_runs(
        self, tenant: FromPath[str], admin: Injected[Admin], store: Injected[Store]
    ) -> ListOf[EvalRunInfo]:
        runs = await store.list_eval_runs((await admin.tenant(tenant)).id)
        return ListOf(data=[EvalRunInfo.of(r) for r in runs])

    @get("/evals/{run_id:str}", summary="An eval run", responses=E(404))
    async def show(
        self,
        tenant: FromPath[str],
        run_id: FromPath[str],
        admin: Injected[Admin],
        store: Injected[Store],
    ) -> EvalRunInfo:
        return EvalRunInfo.of(await _run(admin, store, tenant, run_id))

    @get("/evals/{run_id:str}/results", summary="An eval run's per-case results", responses=E(404))
    async def results(
        self,
        tenant: FromPath[str],
        run_id: FromPath[str],
        admin: Injected[Admin],
        store: Injected[Store],
    ) -> ListOf[EvalResult]:
        run = await _run(admin, store, tenant, run_id)
        return ListOf(data=list(await store.list_eval_results(run.id)))

    @post(
        "/evals/{run_id:str}/answers",
        status_code=200,
        summary="One engine answer for a running eval run (its evals worker's)",
        dto=Json[AnswerRequest],
        return_dto=None,
        responses=E(404, 409, 413, 502, 503, 504),
    )
    async def answer(
        self,
        tenant: FromPath[str],
        run_id: FromPath[str],
        data: JSONBody[AnswerRequest],
        admin: Injected[Admin],
        evaluations: Injected[Evaluations],
    ) -> AnswerReply:
        return await evaluations.answer(await admin.tenant(tenant), run_id, data)

    @get(
        "/evals/{run_id:str}/{name:str}",
        summary="An eval report file",
        operation_class=REPORT,
        responses=E(404),
    )
    async def report_file(
        self,
        tenant: FromPath[str],
        run_id: FromPath[str],
        name: FromPath[str],
        admin: Injected[Admin],
        store: Injected[Store],
    ) -> File:
        run = await _run(admin, store, tenant, run_id)
        if name not in REPORT_FILES or run.report_dir is None:
            raise NotFound(f"no report file '{name}' for {run_id}", param="name")
        return File(Path(run.report_dir) / name, media_type=REPORT_FILES[name])


class LoopController(Controller):
    path = "/admin/tenants/{tenant:str}/loops"

    @post(
        "/",
        status_code=202,
        summary="Start an adaptation loop",
        dto=Json[StartLoop],
        return_dto=None,
        responses=E(404, 413, 503),
    )
    async def start(
        self,
        tenant: FromPath[str],
        data: JSONBody[StartLoop],
        admin: Injected[Admin],
        loops: Injected[Loops],
        actor: Injected[str],
    ) -> LoopRun:
        return await loops.start(await admin.tenant(tenant), data, actor)

    @get("/{run_id:str}", summary="An adaptation loop run", responses=E(404))
    async def show(
        self,
        tenant: FromPath[str],
        run_id: FromPath[str],
        admin: Injected[Admin],
        loops: Injected[Loops],
    ) -> LoopRun:
        return await loops.get(await admin.tenant(tenant), run_id)

    @post(
        "/{run_id:str}/dataset",
        status_code=200,
        summary="A loop's dataset step (its evals worker's)",
        responses=E(404, 409, 422, 429, 503, 504),
    )
    async def dataset(
        self,
        tenant: FromPath[str],
        run_id: FromPath[str],
        admin: Injected[Admin],
        loops: Injected[Loops],
    ) -> LoopDataset:
        return await loops.dataset(await admin.tenant(tenant), run_id)

    @post(
        "/{run_id:str}/job",
        status_code=201,
        summary="A loop's fine-tuning job (its evals worker's)",
        dto=Json[LoopJob],
        return_dto=None,
        responses=E(404, 409, 413, 429, 503),
    )
    async def job(
        self,
        tenant: FromPath[str],
        run_id: FromPath[str],
        data: JSONBody[LoopJob],
        admin: Injected[Admin],
        loops: Injected[Loops],
    ) -> Created:
        return Created((await loops.job(await admin.tenant(tenant), run_id, data.dataset_id)).id)


async def _run(admin: Admin, store: Store, tenant: str, run_id: str) -> EvalRun:
    found = await admin.tenant(tenant)
    run = await store.get_eval_run(found.id, run_id)
    if run is None:
        raise NotFound(f"no eval run '{run_id}' for this tenant", param="run_id")
    return run
