"""PostgreSQL statements for eval runs and results, gate policies and canaries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import evals_sql as q
from store.postgres_erasure import add_case_sources, erased_while_running
from store.postgres_quotas import QuotasMixinPG
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
from store.training_sql import numbered as N

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]


class EvalsMixinPG(QuotasMixinPG):
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def add_eval_run(
        self, run: EvalRun, limits: Usage | None = None, *, sources: Sequence[CaseSource] = ()
    ) -> str | None:
        adding = AN_EVAL_RUN
        async with self._admission(run.tenant_id, run.created_at, limits, adding) as (conn, over):
            if over is None:
                await conn.execute(N(q.INSERT_RUN), *q.run_params(run))
                await add_case_sources(conn, run.id, sources)
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
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(N(q.FINISH_RUN), *args)
            await erased_while_running(conn, run_id)

    async def claim_eval_run(self, worker: str) -> EvalRun | None:
        sql = N(q.CLAIM_RUN.format(lock="FOR UPDATE SKIP LOCKED"))
        row = await self.pool.fetchrow(sql, worker, time.time())
        return q.run(row) if row else None

    async def heartbeat_eval_run(self, run_id: str, worker: str) -> bool:
        status: str = await self.pool.execute(N(q.HEARTBEAT_RUN), time.time(), run_id, worker)
        return not status.endswith(" 0")

    async def requeue_stale_eval_runs(
        self, before: float, max_requeues: int
    ) -> list[tuple[str, str]]:
        args = q.requeue_params(before, max_requeues, time.time())
        return [(r[0], r[1]) for r in await self.pool.fetch(N(q.REQUEUE_STALE_RUNS), *args)]

    async def add_eval_sources(self, run_id: str, sources: Sequence[CaseSource]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await add_case_sources(conn, run_id, sources)

    async def add_loop_run(self, run: LoopRecord) -> None:
        await self.pool.execute(N(q.INSERT_LOOP), *q.loop_params(run))

    async def get_loop_run(self, tenant_id: str, run_id: str) -> LoopRecord | None:
        row = await self.pool.fetchrow(N(q.GET_LOOP), tenant_id, run_id)
        return q.loop(row) if row else None

    async def list_loop_runs(self, tenant_id: str, limit: int) -> list[LoopRecord]:
        return [q.loop(r) for r in await self.pool.fetch(N(q.LIST_LOOPS), tenant_id, limit)]

    async def claim_loop_run(self, worker: str) -> LoopRecord | None:
        sql = N(q.CLAIM_LOOP.format(lock="FOR UPDATE SKIP LOCKED"))
        row = await self.pool.fetchrow(sql, worker, time.time())
        return q.loop(row) if row else None

    async def save_loop_run(
        self, run_id: str, worker: str, status: str, state: str, finished_at: float | None
    ) -> bool:
        args = (status, state, finished_at, time.time(), run_id, worker)
        done: str = await self.pool.execute(N(q.SAVE_LOOP), *args)
        return not done.endswith(" 0")

    async def heartbeat_loop_run(self, run_id: str, worker: str) -> bool:
        status: str = await self.pool.execute(N(q.HEARTBEAT_LOOP), time.time(), run_id, worker)
        return not status.endswith(" 0")

    async def requeue_stale_loop_runs(
        self, before: float, max_requeues: int
    ) -> list[tuple[str, str]]:
        args = q.loop_requeue_params(before, max_requeues, time.time())
        return [(r[0], r[1]) for r in await self.pool.fetch(N(q.REQUEUE_STALE_LOOPS), *args)]

    async def get_eval_run(self, tenant_id: str, run_id: str) -> EvalRun | None:
        row = await self.pool.fetchrow(N(q.GET_RUN), tenant_id, run_id)
        return q.run(row) if row else None

    async def list_eval_runs(self, tenant_id: str, candidate: str | None = None) -> list[EvalRun]:
        if candidate is None:
            rows = await self.pool.fetch(N(q.LIST_RUNS), tenant_id)
        else:
            rows = await self.pool.fetch(N(q.RUNS_OF), tenant_id, candidate)
        return [q.run(r) for r in rows]

    async def add_eval_results(self, results: Sequence[EvalResult]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(N(q.INSERT_RESULT), [q.result_params(r) for r in results])
            for run_id in sorted({r.run_id for r in results}):
                await erased_while_running(conn, run_id)

    async def list_eval_results(self, run_id: str) -> list[EvalResult]:
        return [q.result(r) for r in await self.pool.fetch(N(q.LIST_RESULTS), run_id)]

    async def eval_case_page(
        self, run_id: str, *, suite: str | None, losses: bool, limit: int, offset: int
    ) -> list[EvalResult]:
        sql, args = q.page_of_cases(suite, losses), q.page_args(run_id, suite, limit, offset)
        return [q.result(r) for r in await self.pool.fetch(N(sql), *args)]

    async def set_gate_policy(self, tenant_id: str, policy: str) -> None:
        await self.pool.execute(N(q.SET_POLICY), tenant_id, policy, time.time())

    async def get_gate_policy(self, tenant_id: str) -> str | None:
        value = await self.pool.fetchval(N(q.GET_POLICY), tenant_id)
        return None if value is None else str(value)

    async def add_canary(self, canary: Canary) -> None:
        await self.pool.execute(N(q.INSERT_CANARY), *q.canary_params(canary))

    async def active_canaries(self) -> list[Canary]:
        return [q.canary(r) for r in await self.pool.fetch(q.ACTIVE_CANARIES)]

    async def canaries_of(self, tenant_id: str, alias: str) -> list[Canary]:
        return [q.canary(r) for r in await self.pool.fetch(N(q.CANARIES_OF), tenant_id, alias)]

    async def end_canary(self, canary_id: str, status: CanaryStatus, reason: str) -> bool:
        status_text: str = await self.pool.execute(
            N(q.END_CANARY), status, reason, time.time(), canary_id
        )
        return not status_text.endswith(" 0")
