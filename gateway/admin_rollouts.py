"""Admin API for rollouts (start, list, show, abort), retraining an alias on cleaned data, and the
loop's rollout step (thin handlers over gateway.rollout and gateway.loop)."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody

from evals.loop_record import Created
from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Json
from gateway.loop import LoopRun, Loops, Retrain
from gateway.responses import ListOf
from gateway.rollout import Rollouts
from gateway.rollout_policy import Abort, RolloutView, StartRollout
from gateway.tenancy import Admin

E = apidoc.admin


class RolloutController(Controller):
    path = "/admin/tenants/{tenant:str}/aliases/{alias:str}"

    @post(
        "/rollouts",
        status_code=201,
        summary="Start a rollout: offline gate → shadow → canary steps → full",
        dto=Json[StartRollout],
        return_dto=None,
        responses=E(400, 404, 409, 413, 429, 503),
    )
    async def start(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[StartRollout],
        admin: Injected[Admin],
        rollouts: Injected[Rollouts],
        actor: Injected[str],
    ) -> RolloutView:
        """Walk `version` through the policy's stages on live evidence (one rollout per alias)."""
        return await rollouts.start(await admin.tenant(tenant), alias, data, actor)

    @get("/rollouts", summary="The alias's rollouts, newest first", responses=E(404))
    async def list_rollouts(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        admin: Injected[Admin],
        rollouts: Injected[Rollouts],
    ) -> ListOf[RolloutView]:
        return ListOf(data=await rollouts.of_alias(await admin.tenant(tenant), alias))

    @get(
        "/rollouts/{rollout_id:str}", summary="A rollout, its stage and decisions", responses=E(404)
    )
    async def show(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        rollout_id: FromPath[str],
        admin: Injected[Admin],
        rollouts: Injected[Rollouts],
    ) -> RolloutView:
        return await rollouts.get(await admin.tenant(tenant), alias, rollout_id)

    @post(
        "/rollouts/{rollout_id:str}/abort",
        status_code=200,
        summary="Abort a running rollout (its shadow and canary stop; the alias is untouched)",
        dto=Json[Abort],
        return_dto=None,
        responses=E(404, 409, 413, 503),
    )
    async def abort(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        rollout_id: FromPath[str],
        admin: Injected[Admin],
        rollouts: Injected[Rollouts],
        actor: Injected[str],
        data: JSONBody[Abort | None] = None,
    ) -> RolloutView:
        found = await admin.tenant(tenant)
        reason = (data or Abort()).reason
        return await rollouts.abort(found, alias, rollout_id, actor, reason)

    @post(
        "/retrain",
        status_code=202,
        summary="Retrain the alias on cleaned data; the new version goes through a rollout",
        dto=Json[Retrain],
        return_dto=None,
        responses=E(400, 404, 413, 503),
    )
    async def retrain(
        self,
        tenant: FromPath[str],
        alias: FromPath[str],
        admin: Injected[Admin],
        loops: Injected[Loops],
        actor: Injected[str],
        data: JSONBody[Retrain | None] = None,
    ) -> LoopRun:
        """A loop with the recipe that trained the version, on a fresh snapshot of the traffic
        (erased data and opted-out users left out), ending in a rollout."""
        return await loops.retrain(await admin.tenant(tenant), alias, data or Retrain(), actor)


class LoopRolloutController(Controller):
    path = "/admin/tenants/{tenant:str}/loops/{run_id:str}"

    @post(
        "/rollout",
        status_code=201,
        summary="A loop's rollout step (its evals worker's)",
        responses=E(404, 409, 429, 503),
    )
    async def rollout(
        self,
        tenant: FromPath[str],
        run_id: FromPath[str],
        admin: Injected[Admin],
        loops: Injected[Loops],
    ) -> Created:
        return Created((await loops.rollout(await admin.tenant(tenant), run_id)).id)
