"""Admin API for evals: a tenant's gate policy, eval runs and their reports (thin handlers)."""

from __future__ import annotations

import json
from pathlib import Path

from litestar import Controller, Request, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import File

from gateway.admin_api import admin_guard
from gateway.evaluations import PolicyIn, StartEval
from gateway.loop import LoopRun, StartLoop
from gateway.runtime import Gateway
from store import EvalRun
from store.errors import NotFound

GW = NamedDependency[Gateway]
REPORT_FILES = {"report.md": "text/markdown", "report.html": "text/html", "report.png": "image/png"}


def run_object(run: EvalRun) -> dict[str, object]:
    return {
        "id": run.id,
        "object": "eval.run",
        "alias": run.alias,
        "candidate": run.candidate,
        "live": run.live,
        "status": run.status,
        "promote": run.promote,
        "decision": json.loads(run.decision) if run.decision else None,
        "summary": json.loads(run.summary) if run.summary else None,
        "report_files": sorted(REPORT_FILES) if run.report_dir else [],
        "suite_dataset_id": run.suite_dataset_id,
        "erased_at": run.erased_at,  # answers to erased cases blanked, report deleted
        "error": run.error,
        "created_by": run.created_by,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
    }


class EvalController(Controller):
    path = "/admin/tenants/{tenant:str}"
    guards = [admin_guard]  # noqa: RUF012 - Litestar's declared attribute

    @get("/gate-policy")
    async def get_policy(self, tenant: FromPath[str], gw: GW) -> PolicyIn:
        found = await gw.admin.tenant(tenant)
        return await gw.evaluations.policy(found.id)

    @put("/gate-policy", status_code=200)
    async def set_policy(self, tenant: FromPath[str], data: JSONBody[PolicyIn], gw: GW) -> PolicyIn:
        found = await gw.admin.tenant(tenant)
        return await gw.evaluations.set_policy(found.id, data)

    @post("/evals", status_code=202)
    async def start(
        self,
        tenant: FromPath[str],
        data: JSONBody[StartEval],
        gw: GW,
        request: Request[object, object, State],
    ) -> dict[str, object]:
        found = await gw.admin.tenant(tenant)
        actor = (request.headers.get("x-loopgate-actor") or "admin")[:128]
        return run_object(await gw.evaluations.start(found, data, actor))

    @get("/evals")
    async def list_runs(self, tenant: FromPath[str], gw: GW) -> dict[str, object]:
        found = await gw.admin.tenant(tenant)
        runs = await gw.store.list_eval_runs(found.id)
        return {"object": "list", "data": [run_object(r) for r in runs]}

    @get("/evals/{run_id:str}")
    async def show(self, tenant: FromPath[str], run_id: FromPath[str], gw: GW) -> dict[str, object]:
        return run_object(await _run(gw, tenant, run_id))

    @get("/evals/{run_id:str}/results")
    async def results(
        self, tenant: FromPath[str], run_id: FromPath[str], gw: GW
    ) -> dict[str, object]:
        run = await _run(gw, tenant, run_id)
        return {"object": "list", "data": await gw.store.list_eval_results(run.id)}

    @get("/evals/{run_id:str}/{name:str}")
    async def report_file(
        self, tenant: FromPath[str], run_id: FromPath[str], name: FromPath[str], gw: GW
    ) -> File:
        run = await _run(gw, tenant, run_id)
        if name not in REPORT_FILES or run.report_dir is None:
            raise NotFound(f"no report file '{name}' for {run_id}", param="name")
        return File(Path(run.report_dir) / name, media_type=REPORT_FILES[name])


class LoopController(Controller):
    path = "/admin/tenants/{tenant:str}/loops"
    guards = [admin_guard]  # noqa: RUF012 - Litestar's declared attribute

    @post("/", status_code=202)
    async def start(
        self,
        tenant: FromPath[str],
        data: JSONBody[StartLoop],
        gw: GW,
        request: Request[object, object, State],
    ) -> LoopRun:
        found = await gw.admin.tenant(tenant)
        actor = (request.headers.get("x-loopgate-actor") or "admin")[:128]
        return await gw.loops.start(found, data, actor)

    @get("/{run_id:str}")
    async def show(self, tenant: FromPath[str], run_id: FromPath[str], gw: GW) -> LoopRun:
        return gw.loops.get(await gw.admin.tenant(tenant), run_id)


async def _run(gw: Gateway, tenant: str, run_id: str) -> EvalRun:
    found = await gw.admin.tenant(tenant)
    run = await gw.store.get_eval_run(found.id, run_id)
    if run is None:
        raise NotFound(f"no eval run '{run_id}' for this tenant", param="run_id")
    return run
