"""The evals worker process: claims queued eval runs and loop runs from the store and does them.

Started beside the gateway (`LOOPGATE_EVALS_WORKER=true`, the default) or on its own on another
host (`python -m evals.worker`, with the same store, LOOPGATE_GATEWAY_URL and
LOOPGATE_ADMIN_KEY). Eval runs are done one at a time (their answers are batched on the engine);
loop runs, which mostly wait on a job or an eval, each advance in a task of their own. A run
whose worker went silent for `job_stale_after_s` is queued again, up to `job_max_requeues`
times, then failed with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time

from evals.batch_runner import BatchRunner
from evals.eval_run import EvalJob
from evals.gateway_client import GatewayClient, make_client
from evals.graders import Judge
from evals.loop_run import LoopRunner
from evals.shadow_grading import ShadowGrader
from store import Store, worker_process
from store.settings import Settings
from store.worker_process import run_worker

log = logging.getLogger("loopgate.evals.worker")
POLL_S = 1.0
MAX_BATCHES = 2  # batches one worker runs at once (each with settings.batch_concurrency lines)


class EvalsWorker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        gateway: GatewayClient,
        *,
        poll_s: float = POLL_S,
        loop_poll_s: float = 2.0,
    ):
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.poll_s = poll_s
        self.id = f"evals:{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        beat = settings.job_heartbeat_s
        self.evals = EvalJob(store, gateway, settings.data_dir / "evals", self.id, beat)
        self.loops = LoopRunner(store, gateway, self.id, beat, loop_poll_s)
        self.loop_tasks: set[asyncio.Task[None]] = set()
        self.batches = BatchRunner(store, gateway, self.id, settings, retry_wait_s=poll_s)
        self.batch_tasks: set[asyncio.Task[None]] = set()
        self.shadow_pairs = ShadowGrader(store, judge_for=self._tenant_judge)
        self.stopping = asyncio.Event()
        self.parent = os.getppid()

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        log.info("evals worker %s ready", self.id)
        try:
            while not self.stopping.is_set():
                if await self.step():
                    continue
                if self._orphaned():
                    log.info("the gateway that started this worker is gone; exiting")
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.poll_s)
        finally:
            tasks = [*self.loop_tasks, *self.batch_tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def step(self) -> bool:
        """One pass: requeue the silent workers' runs, start a loop, do an eval; True if busy."""
        await self._requeue_stale()
        record = await self.store.claim_loop_run(self.id)
        if record is not None:
            task = asyncio.create_task(self.loops.run(record), name=f"loop-{record.id}")
            self.loop_tasks.add(task)
            task.add_done_callback(self.loop_tasks.discard)
        batch = await self._start_batch()
        run = await self.store.claim_eval_run(self.id)
        if run is not None:
            log.info("running eval %s for tenant %s", run.id, run.tenant_id)
            await self.evals.run(run)
        graded = await self._grade_shadow_pairs()
        return record is not None or run is not None or batch or graded

    async def _grade_shadow_pairs(self) -> bool:
        """Grade a batch of shadow pairs (evals.shadow_grading); True if there were some."""
        try:
            return await self.shadow_pairs.grade_pending() > 0
        except Exception:  # the store hiccuped: the next pass tries again
            log.exception("grading shadow pairs failed")
            return False

    async def _tenant_judge(self, tenant_id: str) -> Judge | None:
        """The shadow grader's judge hook: the tenant's LLM judge, when it has one."""
        judges = self.evals.judges
        return judges.for_run(tenant_id, None) if await judges.configured(tenant_id) else None

    async def _start_batch(self) -> bool:
        """Claim a batch and run it in a task of its own (evals.batch_runner)."""
        if len(self.batch_tasks) >= MAX_BATCHES:
            return False
        batch = await self.store.claim_batch(self.id)
        if batch is None:
            return False
        log.info("running batch %s for tenant %s", batch.id, batch.tenant_id)
        task = asyncio.create_task(self.batches.run(batch), name=f"batch-{batch.id}")
        self.batch_tasks.add(task)
        task.add_done_callback(self.batch_tasks.discard)
        return True

    async def _requeue_stale(self) -> None:
        before = time.time() - self.settings.job_stale_after_s
        limit = self.settings.job_max_requeues
        for run_id, status in await self.store.requeue_stale_eval_runs(before, limit):
            log.warning("eval %s lost its worker; now %s", run_id, status)
        for run_id, status in await self.store.requeue_stale_loop_runs(before, limit):
            log.warning("loop %s lost its worker; now %s", run_id, status)
        for batch_id, status in await self.store.requeue_stale_batches(before, limit):
            log.warning("batch %s lost its worker; now %s", batch_id, status)

    def _orphaned(self) -> bool:
        """Started by a gateway (not by a user) whose process has died."""
        return os.environ.get("LOOPGATE_WORKER_PARENT") == str(self.parent) and (
            os.getppid() != self.parent
        )


async def serve(settings: Settings) -> int:
    async with make_client(settings) as client:
        gateway = GatewayClient(client)
        await run_worker(settings, lambda store: EvalsWorker(settings, store, gateway))
    return 0


def main(argv: list[str] | None = None) -> int:
    del argv
    return worker_process.main(serve)


if __name__ == "__main__":
    sys.exit(main())
