"""The adaptation loop for one tenant alias: dataset → QLoRA job → eval → gate → promote.

One API call (`POST /admin/tenants/{t}/loops`) or one command (`loopgate loop`) runs every step
through the same services the public API uses; each step is recorded with its time, and the
run's state is also written to `<data_dir>/loops/<id>.json`.

The dataset step obeys the poisoning guards (`training.poisoning`): flagged examples are left
out, and when too many are flagged the run ends `needs_review` with the flags on its record and
nothing trained. An admin restarts it with `dataset.allow_flagged` or `dataset.keep_flagged`
and a `dataset.reason`; that override is on the run and in the dataset's report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from adapters.swap import Swapper
from gateway.dataset_policy import AdminDataset, DatasetOverride, admin_config
from gateway.evaluations import Evaluations, StartEval
from gateway.finetuning import CreateJob, FineTuning, Hyperparameters
from gateway.tenancy import Caller
from store import Dataset, EvalRun, FineTuningJob, Store, Tenant
from store.errors import LoopgateError, NotFound
from training.dataset_config import DatasetConfig
from training.poisoning import SUSPICIONS, Flag, Review

log = logging.getLogger("loopgate.loop")
LoopStatus = Literal["running", "promoted", "refused", "failed", "needs_review"]
POLL_S = 2.0


class StartLoop(msgspec.Struct, forbid_unknown_fields=True):
    alias: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    base: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    suffix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")] = "loop"
    dataset: AdminDataset | None = None
    hyperparameters: Hyperparameters | None = None
    seed: int | None = None
    promote: bool = True


class TrainingFigures(msgspec.Struct):
    """The part of a job's result the loop reports: how fast it trained, in what, on what."""

    train_tokens: int = 0
    tokens_per_s: float = 0.0
    compute_dtype: str = ""
    hardware: str = ""


class JobFigures(msgspec.Struct):
    training: TrainingFigures | None = None


def training_summary(result: str | None) -> str:
    """A job result's 'N tokens at 146 tok/s, float32 on CPU AVX2 (bf16 emulated)', or ''."""
    try:
        figures = msgspec.json.decode(result or "{}", type=JobFigures).training
    except msgspec.DecodeError:
        return ""
    if figures is None:
        return ""
    return (
        f"{figures.train_tokens} tokens at {figures.tokens_per_s:.0f} tok/s, "
        f"{figures.compute_dtype or '?'} on {figures.hardware or '?'}"
    )


class Step(msgspec.Struct):
    at: float
    message: str


class LoopRun(msgspec.Struct):
    id: str
    tenant_id: str
    alias: str
    status: LoopStatus
    started_at: float
    steps: list[Step] = msgspec.field(default_factory=list)
    dataset_id: str | None = None
    job_id: str | None = None
    fine_tuned_model: str | None = None
    candidate: str | None = None
    eval_id: str | None = None
    reasons: list[str] = msgspec.field(default_factory=list)
    seconds: dict[str, float] = msgspec.field(default_factory=dict)
    finished_at: float | None = None
    review: Review | None = None  # the poisoning guards' verdict on the dataset
    flags: list[Flag] = msgspec.field(default_factory=list)  # the acting ones, on a review stop
    override: DatasetOverride | None = None  # an admin's, with its reason


class Loops:
    def __init__(
        self,
        store: Store,
        finetuning: FineTuning,
        evaluations: Evaluations,
        swapper: Swapper,
        root: Path,
    ):
        self.store = store
        self.finetuning = finetuning
        self.evaluations = evaluations
        self.swapper = swapper
        self.root = root
        self.runs: dict[str, LoopRun] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, tenant: Tenant, req: StartLoop, actor: str) -> LoopRun:
        if await self.store.get_alias(tenant.id, req.alias) is None:
            raise NotFound(f"no alias '{req.alias}' for this tenant", param="alias")
        config, override = admin_config(req.dataset or AdminDataset(), actor)
        run = LoopRun("loop-" + secrets.token_hex(6), tenant.id, req.alias, "running", time.time())
        run.override = override
        self.runs[run.id] = run
        task = asyncio.create_task(self._run(run, tenant, req, config, actor))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return run

    def get(self, tenant: Tenant, run_id: str) -> LoopRun:
        run = self.runs.get(run_id)
        if run is None or run.tenant_id != tenant.id:
            path = self.root / tenant.id / f"{run_id}.json"
            if not path.is_file():
                raise NotFound(f"no loop run '{run_id}' for this tenant", param="run_id")
            return msgspec.json.decode(path.read_bytes(), type=LoopRun)
        return run

    def _step(self, run: LoopRun, message: str) -> None:
        run.steps.append(Step(time.time(), message))
        log.info("%s: %s", run.id, message)
        path = self.root / run.tenant_id / f"{run.id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(msgspec.json.format(msgspec.json.encode(run)))

    def _end(self, run: LoopRun, status: LoopStatus, message: str) -> None:
        run.status = status
        run.finished_at = time.time()
        run.seconds["total"] = round(run.finished_at - run.started_at, 1)
        self._step(run, message)

    async def _run(
        self, run: LoopRun, tenant: Tenant, req: StartLoop, config: DatasetConfig, actor: str
    ) -> None:
        caller = Caller(tenant.id, tenant.name, f"loop:{actor}")
        try:
            dataset = await self._dataset(run, caller, config)
            if dataset is not None:
                await self._steps(run, tenant, caller, req, dataset, actor)
        except LoopgateError as exc:
            self._end(run, "failed", f"failed: {exc.message}")
        except Exception as exc:
            log.exception("loop %s failed", run.id)
            self._end(run, "failed", f"failed unexpectedly: {exc}")

    async def _dataset(self, run: LoopRun, caller: Caller, config: DatasetConfig) -> Dataset | None:
        """1. The dataset: a snapshot of the tenant's traffic and feedback, unless the poisoning
        guards stop it for review (then the run ends `needs_review`, and None)."""
        t0 = time.monotonic()
        self._step(run, "building a dataset from captured traffic and feedback")
        snapshot = await self.finetuning.snapshot_traffic(caller, config)
        run.review = snapshot.review
        run.seconds["dataset"] = round(time.monotonic() - t0, 1)
        if snapshot.review.status == "needs_review":
            acting = [f for f in snapshot.flags if f.kind in SUSPICIONS and f.action != "noted"]
            run.flags = acting
            self._end(run, "needs_review", "stopped for review: " + snapshot.review.message)
            return None
        dataset = await self.finetuning.save_traffic(caller, snapshot, run.override)
        run.dataset_id = dataset.id
        self._step(
            run,
            f"dataset {dataset.id}: {dataset.train_count} train / {dataset.eval_count} held-out "
            f"examples, {dataset.preference_count} preference pairs; poisoning guards: "
            + snapshot.review.message,
        )
        return dataset

    async def _steps(
        self,
        run: LoopRun,
        tenant: Tenant,
        caller: Caller,
        req: StartLoop,
        dataset: Dataset,
        actor: str,
    ) -> None:
        # 2. The QLoRA job, run by the worker; the gateway checks parity and registers it.
        t1 = time.monotonic()
        job = await self.finetuning.create_job(
            caller,
            CreateJob(
                model=req.base or req.alias,
                training_file=dataset.id,
                hyperparameters=req.hyperparameters,
                suffix=req.suffix,
                seed=req.seed,
            ),
        )
        run.job_id = job.id
        self._step(run, f"fine-tuning job {job.id} queued")
        job = await self._wait_job(run, job.id)
        run.seconds["training"] = round(time.monotonic() - t1, 1)
        if job.status != "succeeded" or job.adapter_version is None:
            error = json.loads(job.error or "{}").get("message", job.status)
            self._end(run, "failed", f"job {job.id} {job.status}: {error}")
            return
        run.candidate, run.fine_tuned_model = job.adapter_version, job.fine_tuned_model
        trained = training_summary(job.result)
        self._step(
            run,
            f"candidate {job.adapter_version} registered as {job.fine_tuned_model}"
            + (f" (trained {trained})" if trained else ""),
        )
        # 3. Eval: candidate vs live vs base on the held-out split and the guard suite.
        t2 = time.monotonic()
        started = await self.evaluations.start(
            tenant, StartEval(alias=run.alias, candidate=job.adapter_version), actor=f"loop:{actor}"
        )
        run.eval_id = started.id
        self._step(run, f"eval {started.id} running")
        evaluated = await self._wait_eval(tenant, started.id)
        run.seconds["eval"] = round(time.monotonic() - t2, 1)
        decision = json.loads(evaluated.decision or "{}")
        run.reasons = list(decision.get("reasons", [evaluated.error or "the eval failed"]))
        if evaluated.status != "done" or not evaluated.promote:
            self._end(run, "refused", "the gate refused the candidate: " + "; ".join(run.reasons))
            return
        # 4. Promotion, live, with the usual swap protocol (zero failed requests).
        if not req.promote:
            self._end(run, "refused", "the gate passed; promotion was not requested")
            return
        t3 = time.monotonic()
        await self.swapper.promote(
            tenant,
            run.alias,
            job.adapter_version,
            actor=f"loop:{actor}",
            reason=f"loop {run.id}: eval {started.id} passed the gate",
        )
        run.seconds["promote"] = round(time.monotonic() - t3, 1)
        self._end(run, "promoted", f"promoted {job.adapter_version} onto '{run.alias}'")

    async def _wait_job(self, run: LoopRun, job_id: str) -> FineTuningJob:
        last = ""
        while True:
            job = await self.store.get_job(job_id)
            assert job is not None
            events, _ = await self.store.list_job_events(job_id, None, 1)
            if events and events[0].message != last:
                last = events[0].message
                self._step(run, f"job: {last}")
            if job.status in ("succeeded", "failed", "cancelled"):
                return job
            await asyncio.sleep(POLL_S)

    async def _wait_eval(self, tenant: Tenant, run_id: str) -> EvalRun:
        while True:
            found = await self.store.get_eval_run(tenant.id, run_id)
            assert found is not None
            if found.status != "running":
                return found
            await asyncio.sleep(POLL_S)
