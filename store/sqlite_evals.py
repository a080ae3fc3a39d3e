"""SQLite statements for eval runs and results, gate policies and canaries."""

from __future__ import annotations

import time
from collections.abc import Sequence

from store import evals_sql as q
from store.quotas_sql import AN_EVAL_RUN
from store.records import (
    Canary,
    CanaryStatus,
    CaseSource,
    EvalResult,
    EvalRun,
    EvalStatus,
    LoopRecord,
    Usage,
)
from store.sqlite_erasure import add_case_sources, erased_while_running
from store.sqlite_quotas import QuotasMixin


class EvalsMixin(QuotasMixin):
    async def add_eval_run(
        self, run: EvalRun, limits: Usage | None = None, *, sources: Sequence[CaseSource] = ()
    ) -> str | None:
        async with self._admission(run.tenant_id, run.created_at, limits, AN_EVAL_RUN) as over:
            if over is None:
                await self.db.execute(q.INSERT_RUN, q.run_params(run))
                await add_case_sources(self.db, run.id, sources)
        return over

    async def finish_eval_run(
        self,
        run_id: str,
        status: EvalStatus,
        *,
        promote: bool | None = None,
        decision: str | None = None,
        summary: str | None = None,
        report_dir: str | None = None,
        error: str | None = None,
    ) -> None:
        args = (status, promote, decision, summary, report_dir, error, time.time(), run_id)
        async with self.transaction():
            await self.db.execute(q.FINISH_RUN, args)
            await erased_while_running(self.db, run_id)

    async def claim_eval_run(self, worker: str) -> EvalRun | None:
        sql = q.CLAIM_RUN.format(lock="")
        async with self.transaction(), self.db.execute(sql, (worker, time.time())) as cur:
            row = await cur.fetchone()
        return q.run(row) if row else None

    async def heartbeat_eval_run(self, run_id: str, worker: str) -> bool:
        return (await self._write(q.HEARTBEAT_RUN, (time.time(), run_id, worker))).rowcount > 0

    async def requeue_stale_eval_runs(
        self, before: float, max_requeues: int
    ) -> list[tuple[str, str]]:
        args = q.requeue_params(before, max_requeues, time.time())
        async with self.transaction(), self.db.execute(q.REQUEUE_STALE_RUNS, args) as cur:
            return [(r[0], r[1]) for r in await cur.fetchall()]

    async def add_eval_sources(self, run_id: str, sources: Sequence[CaseSource]) -> None:
        async with self.transaction():
            await add_case_sources(self.db, run_id, sources)

    async def add_loop_run(self, run: LoopRecord) -> None:
        await self._write(q.INSERT_LOOP, q.loop_params(run))

    async def get_loop_run(self, tenant_id: str, run_id: str) -> LoopRecord | None:
        async with self.db.execute(q.GET_LOOP, (tenant_id, run_id)) as cur:
            row = await cur.fetchone()
        return q.loop(row) if row else None

    async def list_loop_runs(self, tenant_id: str, limit: int) -> list[LoopRecord]:
        async with self.db.execute(q.LIST_LOOPS, (tenant_id, limit)) as cur:
            return [q.loop(r) for r in await cur.fetchall()]

    async def claim_loop_run(self, worker: str) -> LoopRecord | None:
        sql = q.CLAIM_LOOP.format(lock="")
        async with self.transaction(), self.db.execute(sql, (worker, time.time())) as cur:
            row = await cur.fetchone()
        return q.loop(row) if row else None

    async def save_loop_run(
        self, run_id: str, worker: str, status: str, state: str, finished_at: float | None
    ) -> bool:
        args = (status, state, finished_at, time.time(), run_id, worker)
        return (await self._write(q.SAVE_LOOP, args)).rowcount > 0

    async def heartbeat_loop_run(self, run_id: str, worker: str) -> bool:
        return (await self._write(q.HEARTBEAT_LOOP, (time.time(), run_id, worker))).rowcount > 0

    async def requeue_stale_loop_runs(
        self, before: float, max_requeues: int
    ) -> list[tuple[str, str]]:
        args = q.loop_requeue_params(before, max_requeues, time.time())
        async with self.transaction(), self.db.execute(q.REQUEUE_STALE_LOOPS, args) as cur:
            return [(r[0], r[1]) for r in await cur.fetchall()]

    async def get_eval_run(self, tenant_id: str, run_id: str) -> EvalRun | None:
        async with self.db.execute(q.GET_RUN, (tenant_id, run_id)) as cur:
            row = await cur.fetchone()
        return q.run(row) if row else None

    async def list_eval_runs(self, tenant_id: str, candidate: str | None = None) -> list[EvalRun]:
        sql, args = (
            (q.LIST_RUNS, (tenant_id,))
            if candidate is None
            else (
                q.RUNS_OF,
                (tenant_id, candidate),
            )
        )
        async with self.db.execute(sql, args) as cur:
            return [q.run(r) for r in await cur.fetchall()]

    async def add_eval_results(self, results: Sequence[EvalResult]) -> None:
        async with self.transaction():
            await self.db.executemany(q.INSERT_RESULT, [q.result_params(r) for r in results])
            for run_id in sorted({r.run_id for r in results}):
                await erased_while_running(self.db, run_id)

    async def list_eval_results(self, run_id: str) -> list[EvalResult]:
        async with self.db.execute(q.LIST_RESULTS, (run_id,)) as cur:
            return [q.result(r) for r in await cur.fetchall()]

    async def eval_case_page(
        self, run_id: str, *, suite: str | None, losses: bool, limit: int, offset: int
    ) -> list[EvalResult]:
        sql, args = q.page_of_cases(suite, losses), q.page_args(run_id, suite, limit, offset)
        async with self.db.execute(sql, args) as cur:
            return [q.result(r) for r in await cur.fetchall()]

    async def set_gate_policy(self, tenant_id: str, policy: str) -> None:
        await self._write(q.SET_POLICY, (tenant_id, policy, time.time()))

    async def get_gate_policy(self, tenant_id: str) -> str | None:
        async with self.db.execute(q.GET_POLICY, (tenant_id,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def add_canary(self, canary: Canary) -> None:
        await self._write(q.INSERT_CANARY, q.canary_params(canary))

    async def active_canaries(self) -> list[Canary]:
        async with self.db.execute(q.ACTIVE_CANARIES) as cur:
            return [q.canary(r) for r in await cur.fetchall()]

    async def canaries_of(self, tenant_id: str, alias: str) -> list[Canary]:
        async with self.db.execute(q.CANARIES_OF, (tenant_id, alias)) as cur:
            return [q.canary(r) for r in await cur.fetchall()]

    async def end_canary(self, canary_id: str, status: CanaryStatus, reason: str) -> bool:
        cur = await self._write(q.END_CANARY, (status, reason, time.time(), canary_id))
        return cur.rowcount > 0
