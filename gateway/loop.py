"""The adaptation loop on the gateway side: starting a run (a queued row), reading it, and the two
steps only the gateway performs for it (the dataset and the QLoRA job).

One API call (`POST /admin/tenants/{t}/loops`) or one command (`loopgate loop`) starts a run;
an evals worker (evals.loop_run) claims it and advances it step by step, dataset → QLoRA job →
eval → gate → promote, asking this gateway's admin API for each step (so the same validation,
quotas and live swap apply as for the public API). Each step is recorded with its time.

The dataset step obeys the poisoning guards (`training.poisoning`): flagged examples are left
out, and when too many are flagged the run ends `needs_review` with the flags on its record and
nothing trained. An admin restarts it with `dataset.allow_flagged` or `dataset.keep_flagged`
and a `dataset.reason`; that override is on the run and in the dataset's report.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated

import msgspec

from evals.loop_record import (
    DatasetSummary,
    LoopDataset,
    LoopRun,
    Step,
    training_summary,
)
from gateway.dataset_policy import AdminDataset, admin_config
from gateway.finetuning import CreateJob, FineTuning, Hyperparameters
from gateway.tenancy import Caller
from store import FineTuningJob, LoopRecord, Store, Tenant
from store.errors import Conflict, NotFound
from training.poisoning import SUSPICIONS

__all__ = ["LoopRun", "Loops", "StartLoop", "training_summary"]
LOST = "failed: the worker running this loop went silent too many times"


class StartLoop(msgspec.Struct, forbid_unknown_fields=True):
    alias: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    base: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    suffix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")] = "loop"
    dataset: AdminDataset | None = None
    hyperparameters: Hyperparameters | None = None
    seed: int | None = None
    promote: bool = True


class LoopSpec(msgspec.Struct):
    """What started a run, as stored with it (the worker reads `evals.loop_record.LoopSpecView`)."""

    request: StartLoop
    actor: str


class Loops:
    def __init__(self, store: Store, finetuning: FineTuning):
        self.store = store
        self.finetuning = finetuning

    async def start(self, tenant: Tenant, req: StartLoop, actor: str) -> LoopRun:
        if await self.store.get_alias(tenant.id, req.alias) is None:
            raise NotFound(f"no alias '{req.alias}' for this tenant", param="alias")
        _, override = admin_config(req.dataset or AdminDataset(), actor)  # refuses a bad one
        run = LoopRun("loop-" + secrets.token_hex(6), tenant.id, req.alias, "running", time.time())
        run.override = override
        await self.store.add_loop_run(
            LoopRecord(
                id=run.id,
                tenant_id=tenant.id,
                alias=req.alias,
                status=run.status,
                spec=msgspec.json.encode(LoopSpec(req, actor)).decode(),
                state=msgspec.json.encode(run).decode(),
                created_at=run.started_at,
            )
        )
        return run

    async def get(self, tenant: Tenant, run_id: str) -> LoopRun:
        return view(await self._record(tenant, run_id))

    async def _record(self, tenant: Tenant, run_id: str) -> LoopRecord:
        found = await self.store.get_loop_run(tenant.id, run_id)
        if found is None:
            raise NotFound(f"no loop run '{run_id}' for this tenant", param="run_id")
        return found

    async def _running(self, tenant: Tenant, run_id: str) -> tuple[LoopSpec, LoopRun]:
        record = await self._record(tenant, run_id)
        if record.status != "running":
            raise Conflict(f"loop run {run_id} is {record.status}, not running")
        spec = msgspec.json.decode(record.spec, type=LoopSpec)
        return spec, msgspec.json.decode(record.state, type=LoopRun)

    # -- the steps its worker asks for ----------------------------------------------------------

    async def dataset(self, tenant: Tenant, run_id: str) -> LoopDataset:
        """1. A snapshot of the tenant's traffic and feedback, saved unless the poisoning guards
        stop it for review (then with the acting flags, and nothing saved)."""
        spec, run = await self._running(tenant, run_id)
        config, _ = admin_config(spec.request.dataset or AdminDataset(), spec.actor)
        built = await self.finetuning.build_traffic(_caller(tenant, spec), config, run.override)
        d = built.dataset
        if d is None:
            acting = [f for f in built.flags if f.kind in SUSPICIONS and f.action != "noted"]
            return LoopDataset(built.review, None, acting)
        summary = DatasetSummary(d.id, d.train_count, d.eval_count, d.preference_count)
        return LoopDataset(built.review, summary)

    async def job(self, tenant: Tenant, run_id: str, dataset_id: str) -> FineTuningJob:
        """2. The QLoRA job on that dataset, queued for a training worker. Idempotent: a worker
        that died after asking but before saving the job's id gets the same job again."""
        spec, run = await self._running(tenant, run_id)
        actor = f"loop:{spec.actor}:{run_id}"
        existing = await self._job_of(tenant, actor, dataset_id, since=run.started_at)
        if existing is not None:
            return existing
        req = spec.request
        return await self.finetuning.create_job(
            Caller(tenant.id, tenant.name, actor),
            CreateJob(
                model=req.base or req.alias,
                training_file=dataset_id,
                hyperparameters=req.hyperparameters,
                suffix=req.suffix,
                seed=req.seed,
            ),
        )

    async def _job_of(
        self, tenant: Tenant, actor: str, dataset_id: str, *, since: float
    ) -> FineTuningJob | None:
        """The job this loop run already created on `dataset_id`, if any (newest first, back
        to the run's start); a job records its creator as `key:<the caller's key id>`."""
        after: str | None = None
        while True:
            jobs, more = await self.store.list_jobs(tenant.id, after, 100)
            for job in jobs:
                if job.created_at < since:
                    return None
                if job.created_by == f"key:{actor}" and job.dataset_id == dataset_id:
                    return job
            if not more or not jobs:
                return None
            after = jobs[-1].id


def _caller(tenant: Tenant, spec: LoopSpec) -> Caller:
    return Caller(tenant.id, tenant.name, f"loop:{spec.actor}")


def view(record: LoopRecord) -> LoopRun:
    """The run as shown: its record, and the row's end when the store failed it (its workers
    kept going silent, so none could say so on the record)."""
    run = msgspec.json.decode(record.state, type=LoopRun)
    if record.status == "failed" and run.status == "running":
        run.status = "failed"
        run.finished_at = record.finished_at
        run.steps.append(Step(record.finished_at or time.time(), LOST))
    return run
