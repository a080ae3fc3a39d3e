"""One claimed adaptation loop, advanced step by step in the evals worker:
dataset → QLoRA job → eval → gate → a rollout (default) or a direct promotion (`end: promote`).

Each step that the gateway performs (the dataset with the poisoning guards and quotas, the job,
the eval run, the live promotion) is asked of it over its admin API; the worker waits on the
job and the eval in the store. The record is saved after every step, so a loop whose worker
died resumes where it stood (a step asked of the gateway just before the death may be asked
again). A review stop of the poisoning guards ends the run `needs_review` with the acting flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import msgspec

from evals.gateway_client import GatewayClient, GatewayError
from evals.loop_record import LoopRun, LoopSpecView, LoopStatus, Step, training_summary
from store import EvalRun, FineTuningJob, LoopRecord, Store

log = logging.getLogger("loopgate.loop")
FINISHED_JOB = ("succeeded", "failed", "cancelled")


class LostClaim(Exception):
    """Another worker holds the run now (this one was silent too long)."""


class LoopRunner:
    def __init__(
        self,
        store: Store,
        gateway: GatewayClient,
        worker_id: str,
        heartbeat_s: float,
        poll_s: float = 2.0,
    ):
        self.store = store
        self.gateway = gateway
        self.worker_id = worker_id
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s

    async def run(self, record: LoopRecord) -> None:
        run = msgspec.json.decode(record.state, type=LoopRun)
        spec = msgspec.json.decode(record.spec, type=LoopSpecView)
        async with self._heartbeat(run.id):
            try:
                await self._advance(run, spec)
            except LostClaim:
                log.warning("loop %s is no longer this worker's", run.id)
            except GatewayError as exc:
                await self._end(run, "failed", f"failed: {exc.message}")
            except Exception as exc:
                log.exception("loop %s failed", run.id)
                await self._end(run, "failed", f"failed unexpectedly: {exc}")

    @contextlib.asynccontextmanager
    async def _heartbeat(self, run_id: str) -> AsyncIterator[None]:
        async def beat() -> None:
            while True:
                await asyncio.sleep(self.heartbeat_s)
                await self.store.heartbeat_loop_run(run_id, self.worker_id)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _save(self, run: LoopRun) -> None:
        state = msgspec.json.encode(run).decode()
        saved = await self.store.save_loop_run(
            run.id, self.worker_id, run.status, state, run.finished_at
        )
        if not saved:
            raise LostClaim(run.id)

    async def _step(self, run: LoopRun, message: str) -> None:
        run.steps.append(Step(time.time(), message))
        log.info("%s: %s", run.id, message)
        await self._save(run)

    async def _end(self, run: LoopRun, status: LoopStatus, message: str) -> None:
        run.status = status
        run.finished_at = time.time()
        run.seconds["total"] = round(run.finished_at - run.started_at, 1)
        with contextlib.suppress(LostClaim):
            await self._step(run, message)

    async def _advance(self, run: LoopRun, spec: LoopSpecView) -> None:
        if run.dataset_id is None and not await self._dataset(run):
            return
        if run.candidate is None and not await self._train(run):
            return
        if not await self._evaluate(run, spec):
            return
        if not spec.request.promote:
            await self._end(run, "refused", "the gate passed; promotion was not requested")
            return
        if spec.request.end == "rollout":
            await self._rollout(run)
            return
        # 4. Promotion, live, with the usual swap protocol (zero failed requests).
        t3 = time.monotonic()
        assert run.candidate is not None
        reason = f"loop {run.id}: eval {run.eval_id} passed the gate"
        await self.gateway.promote(
            run.tenant_id, run.alias, run.candidate, f"loop:{spec.actor}", reason
        )
        run.seconds["promote"] = round(time.monotonic() - t3, 1)
        await self._end(run, "promoted", f"promoted {run.candidate} onto '{run.alias}'")

    async def _rollout(self, run: LoopRun) -> None:
        """4. A rollout of the candidate (gateway.rollout): shadow, canary steps and promotion
        on live evidence, by the gateway's controller; the loop's part ends when it starts."""
        t3 = time.monotonic()
        run.rollout_id = await self.gateway.loop_rollout(run.tenant_id, run.id)
        run.seconds["rollout_start"] = round(time.monotonic() - t3, 1)
        message = (
            f"rollout {run.rollout_id} of {run.candidate} onto '{run.alias}' started: "
            "offline gate → shadow → canary → full"
        )
        await self._end(run, "rolling_out", message)

    async def _dataset(self, run: LoopRun) -> bool:
        """1. The dataset: a snapshot of the tenant's traffic and feedback, unless the poisoning
        guards stop it for review (then the run ends `needs_review`, and False)."""
        t0 = time.monotonic()
        await self._step(run, "building a dataset from captured traffic and feedback")
        outcome = await self.gateway.loop_dataset(run.tenant_id, run.id)
        run.review = outcome.review
        run.seconds["dataset"] = round(time.monotonic() - t0, 1)
        if outcome.dataset is None:
            run.flags = outcome.flags
            await self._end(run, "needs_review", "stopped for review: " + outcome.review.message)
            return False
        d = outcome.dataset
        run.dataset_id = d.id
        await self._step(
            run,
            f"dataset {d.id}: {d.train_count} train / {d.eval_count} held-out examples, "
            f"{d.preference_count} preference pairs; poisoning guards: {outcome.review.message}",
        )
        return True

    async def _train(self, run: LoopRun) -> bool:
        """2. The QLoRA job, run by a training worker; the gateway checks parity, registers it."""
        assert run.dataset_id is not None
        t1 = time.monotonic()
        if run.job_id is None:
            run.job_id = await self.gateway.loop_job(run.tenant_id, run.id, run.dataset_id)
            await self._step(run, f"fine-tuning job {run.job_id} queued")
        job = await self._wait_job(run, run.job_id)
        run.seconds["training"] = round(time.monotonic() - t1, 1)
        if job.status != "succeeded" or job.adapter_version is None:
            error = json.loads(job.error or "{}").get("message", job.status)
            await self._end(run, "failed", f"job {job.id} {job.status}: {error}")
            return False
        run.candidate, run.fine_tuned_model = job.adapter_version, job.fine_tuned_model
        trained = training_summary(job.result)
        await self._step(
            run,
            f"candidate {job.adapter_version} registered as {job.fine_tuned_model}"
            + (f" (trained {trained})" if trained else ""),
        )
        return True

    async def _evaluate(self, run: LoopRun, spec: LoopSpecView) -> bool:
        """3. Eval: candidate vs live vs base on the held-out split and the guard suite."""
        assert run.candidate is not None
        t2 = time.monotonic()
        if run.eval_id is None:
            actor = f"loop:{spec.actor}"
            run.eval_id = await self.gateway.start_eval(
                run.tenant_id, run.alias, run.candidate, actor
            )
            await self._step(run, f"eval {run.eval_id} running")
        evaluated = await self._wait_eval(run.tenant_id, run.eval_id)
        run.seconds["eval"] = round(time.monotonic() - t2, 1)
        decision = json.loads(evaluated.decision or "{}")
        run.reasons = list(decision.get("reasons", [evaluated.error or "the eval failed"]))
        if evaluated.status != "done" or not evaluated.promote:
            message = "the gate refused the candidate: " + "; ".join(run.reasons)
            await self._end(run, "refused", message)
            return False
        return True

    async def _wait_job(self, run: LoopRun, job_id: str) -> FineTuningJob:
        last = ""
        while True:
            job = await self.store.get_job(job_id)
            assert job is not None
            events, _ = await self.store.list_job_events(job_id, None, 1)
            if events and events[0].message != last:
                last = events[0].message
                await self._step(run, f"job: {last}")
            if job.status in FINISHED_JOB:
                return job
            await asyncio.sleep(self.poll_s)

    async def _wait_eval(self, tenant_id: str, run_id: str) -> EvalRun:
        while True:
            found = await self.store.get_eval_run(tenant_id, run_id)
            assert found is not None
            if found.status in ("done", "failed"):
                return found
            await asyncio.sleep(self.poll_s)
