"""Admin route: register a fine-tuning job's checkpoint as a candidate adapter version."""

from __future__ import annotations

from litestar import Controller, post
from litestar.params import FromPath

from gateway import apidoc
from gateway.access import Injected
from gateway.checkpoints import Checkpoint
from gateway.finetuning import FineTuning
from gateway.tenancy import Admin

E = apidoc.admin


class CheckpointController(Controller):
    path = "/admin/tenants/{tenant:str}/fine_tuning/jobs/{job_id:str}/checkpoints"

    @post(
        "/{checkpoint_id:str}/register",
        status_code=200,
        summary="Register a job's checkpoint as a candidate version (served by its model name)",
        responses=E(404, 422, 503),
    )
    async def register(
        self,
        tenant: FromPath[str],
        job_id: FromPath[str],
        checkpoint_id: FromPath[str],
        admin: Injected[Admin],
        finetuning: Injected[FineTuning],
        admin_actor: Injected[str],
    ) -> Checkpoint:
        """Validated and imported like any adapter; its alias is `fine_tuned_model_checkpoint`."""
        found = await admin.tenant(tenant)
        job = await finetuning.job_of(found.id, job_id)
        kept = await finetuning.checkpoints.register(found, job, checkpoint_id, admin_actor)
        return Checkpoint.of(kept)
