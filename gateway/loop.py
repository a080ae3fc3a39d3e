"""The adaptation loop on the gateway side: starting a run (a queued row), reading it, and the two
steps only the gateway performs for it (the dataset and the QLoRA job).

One API call (`POST /admin/tenants/{t}/loops`) or one command (`loopgate loop`) starts a run;
an evals worker (evals.loop_run) claims it and advances it step by step, dataset → QLoRA job →
eval → gate → a rollout of the candidate (gateway.rollout: shadow, canary steps, promotion on
live evidence; `end: "promote"` promotes at once instead, `promote: false` stops after the
gate), asking this gateway's admin API for each step (so the same validation, quotas and live
swap apply as for the public API). Each step is recorded with its time; a run that ended in a
rollout shows the rollout's stage, and its end once it has one.

`retrain` is the same loop again for an alias whose version was trained on data since erased
or withdrawn from training: the request that trained it (or the defaults), on a fresh snapshot
of the traffic (which leaves out erased data and opted-out users), ending in a rollout.

The dataset step obeys the poisoning guards (`training.poisoning`): flagged examples are left
out, and when too many are flagged the run ends `needs_review` with the flags on its record and
nothing trained. An admin restarts it with `dataset.allow_flagged` or `dataset.keep_flagged`
and a `dataset.reason`; that override is on the run and in the dataset's report.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Literal

import msgspec

from evals.loop_record import (
    DatasetSummary,
    LoopDataset,
    LoopRun,
    LoopStatus,
    Step,
    training_summary,
)
from gateway.dataset_policy import AdminDataset, admin_config
from gateway.finetuning import CreateJob, FineTuning, Hyperparameters
from gateway.rollout import Rollouts
from gateway.rollout_policy import RolloutPolicy, RolloutView, StartRollout
from gateway.tenancy import Caller
from store import FineTuningJob, LoopRecord, Store, Tenant
from store.errors import Conflict, NotFound
from training.poisoning import SUSPICIONS

__all__ = ["LoopRun", "Loops", "Retrain", "StartLoop", "training_summary"]
LOST = "failed: the worker running this loop went silent too many times"
ROLLOUT_END: dict[str, LoopStatus] = {
    "promoted": "promoted",
    "rolled_back": "rolled_back",
    "aborted": "aborted",
}
RECIPE_SEARCH = 500  # loop runs looked through for the one that trained a version


class StartLoop(msgspec.Struct, forbid_unknown_fields=True):
    alias: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    base: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    suffix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")] = "loop"
    dataset: AdminDataset | None = None
    hyperparameters: Hyperparameters | None = None
    seed: int | None = None
    promote: bool = True  # False: stop after the gate's verdict
    # After the gate: a rollout (shadow, canary steps, promotion on live evidence), or the
    # direct promotion of before.
    end: Literal["rollout", "promote"] = "rollout"
    rollout: RolloutPolicy | None = None  # the rollout's policy (None: its defaults)


class Retrain(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /admin/tenants/{t}/aliases/{a}/retrain`: the version to replace (default: what the
    alias serves, else its latest rollout's), why, and the new version's rollout policy."""

    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    rollout: RolloutPolicy | None = None


class LoopSpec(msgspec.Struct):
    """What started a run, as stored with it (the worker reads `evals.loop_record.LoopSpecView`)."""

    request: StartLoop
    actor: str


class Loops:
    def __init__(self, store: Store, finetuning: FineTuning, rollouts: Rollouts):
        self.store = store
        self.finetuning = finetuning
        self.rollouts = rollouts

    async def start(
        self, tenant: Tenant, req: StartLoop, actor: str, note: str | None = None
    ) -> LoopRun:
        if await self.store.get_alias(tenant.id, req.alias) is None:
            raise NotFound(f"no alias '{req.alias}' for this tenant", param="alias")
        _, override = admin_config(req.dataset or AdminDataset(), actor)  # refuses a bad one
        if req.rollout is not None:
            req.rollout.check()
        run = LoopRun("loop-" + secrets.token_hex(6), tenant.id, req.alias, "running", time.time())
        run.override = override
        if note is not None:
            run.steps.append(Step(run.started_at, note))
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
        run = view(await self._record(tenant, run_id))
        if run.rollout_id is not None:
            rollout = await self.store.get_rollout(tenant.id, run.rollout_id)
            if rollout is not None:
                run.rollout_stage = rollout.stage
                run.status = ROLLOUT_END.get(rollout.status, run.status)
        return run

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

    async def rollout(self, tenant: Tenant, run_id: str) -> RolloutView:
        """4. The rollout the run ends in: its candidate, through the eval that passed the gate.
        Idempotent: a worker asking again gets the rollout this run started."""
        spec, run = await self._running(tenant, run_id)
        if run.candidate is None or run.eval_id is None:
            raise Conflict(f"loop run {run_id} has no candidate through the gate yet")
        actor = f"loop:{spec.actor}:{run_id}"
        for started in await self.rollouts.of_alias(tenant, run.alias):
            if started.version == run.candidate and started.actor == actor:
                return started
        reason = f"loop {run_id}: eval {run.eval_id} passed the gate"
        req = StartRollout(run.candidate, spec.request.rollout, run.eval_id, reason)
        return await self.rollouts.start(tenant, run.alias, req, actor)

    async def retrain(self, tenant: Tenant, alias: str, req: Retrain, actor: str) -> LoopRun:
        """A loop with the recipe that trained the version, on a fresh (cleaned) snapshot."""
        version = await self._to_replace(tenant, alias, req.version)
        recipe = await self._recipe_of(tenant, version)
        source = f"the recipe that trained {version}" if recipe else "the default recipe"
        recipe = recipe or StartLoop(alias=alias)
        request = msgspec.structs.replace(
            recipe, alias=alias, promote=True, end="rollout", rollout=req.rollout or recipe.rollout
        )
        note = (
            f"retraining {version or alias} with {source} on a fresh snapshot without erased or "
            f"opted-out data: {req.reason or 'no reason given'}"
        )
        return await self.start(tenant, request, actor, note)

    async def _to_replace(self, tenant: Tenant, alias: str, given: str | None) -> str | None:
        found = await self.store.get_alias(tenant.id, alias)
        if found is None:
            raise NotFound(f"no alias '{alias}' for this tenant", param="alias")
        if given is not None:
            version = await self.store.get_adapter(given)
            if version is None or version.tenant_id != tenant.id:
                raise NotFound(f"no adapter version '{given}' for this tenant", param="version")
            return version.id
        if found.target.adapter_version is not None:
            return found.target.adapter_version
        latest = await self.store.list_rollouts(tenant.id, alias, 1)
        return latest[0].version if latest else None

    async def _recipe_of(self, tenant: Tenant, version: str | None) -> StartLoop | None:
        """The request of the loop run whose candidate the version was, if a loop trained it."""
        if version is None:
            return None
        for record in await self.store.list_loop_runs(tenant.id, RECIPE_SEARCH):
            if msgspec.json.decode(record.state, type=LoopRun).candidate == version:
                return msgspec.json.decode(record.spec, type=LoopSpec).request
        return None


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
