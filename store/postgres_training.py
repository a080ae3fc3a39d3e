"""PostgreSQL statements for uploaded files, dataset snapshots and fine-tuning jobs."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import quotas_sql
from store import training_sql as q
from store.postgres_erasure import add_sources
from store.postgres_quotas import QuotasMixinPG
from store.records import (
    Dataset,
    FileObject,
    FineTuningJob,
    JobChanges,
    JobEvent,
    JobStage,
    Usage,
)

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]

N = q.numbered


class TrainingMixinPG(QuotasMixinPG):
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def list_optouts(self, tenant_id: str) -> set[str]:
        return {r[0] for r in await self.pool.fetch(N(q.LIST_OPTOUTS), tenant_id)}

    async def add_file(self, f: FileObject, limits: Usage | None = None) -> str | None:
        adding = quotas_sql.a_file(f)
        async with self._admission(f.tenant_id, f.created_at, limits, adding) as (conn, over):
            if over is None:
                await conn.execute(N(q.INSERT_FILE), *q.file_params(f))
        return over

    async def get_file(self, tenant_id: str, file_id: str) -> FileObject | None:
        row = await self.pool.fetchrow(N(q.GET_FILE), tenant_id, file_id)
        return q.file(row) if row else None

    async def list_files(self, tenant_id: str) -> list[FileObject]:
        return [q.file(r) for r in await self.pool.fetch(N(q.LIST_FILES), tenant_id)]

    async def delete_file(self, tenant_id: str, file_id: str) -> bool:
        status: str = await self.pool.execute(N(q.DELETE_FILE), tenant_id, file_id)
        return not status.endswith(" 0")

    async def add_dataset(
        self,
        d: Dataset,
        completion_ids: Collection[str],
        limits: Usage | None = None,
        *,
        flagged: Collection[str] = (),
    ) -> str | None:
        adding = quotas_sql.A_DATASET
        async with self._admission(d.tenant_id, d.created_at, limits, adding) as (conn, over):
            if over is not None:
                return over
            await conn.execute(N(q.INSERT_DATASET), *q.dataset_params(d))
            await add_sources(conn, d.id, completion_ids, flagged)
        return None

    async def get_dataset(self, tenant_id: str, dataset_id: str) -> Dataset | None:
        row = await self.pool.fetchrow(N(q.GET_DATASET), tenant_id, dataset_id)
        return q.dataset(row) if row else None

    async def list_datasets(self, tenant_id: str) -> list[Dataset]:
        return [q.dataset(r) for r in await self.pool.fetch(N(q.LIST_DATASETS), tenant_id)]

    async def create_job(self, job: FineTuningJob, limits: Usage | None = None) -> str | None:
        adding = quotas_sql.a_job(job)
        async with self._admission(job.tenant_id, job.created_at, limits, adding) as (conn, over):
            if over is None:
                await conn.execute(N(q.INSERT_JOB), *q.job_params(job))
        return over

    async def get_job(self, job_id: str, tenant_id: str | None = None) -> FineTuningJob | None:
        if tenant_id is None:
            row = await self.pool.fetchrow(N(q.GET_JOB), job_id)
        else:
            row = await self.pool.fetchrow(N(q.GET_TENANT_JOB), job_id, tenant_id)
        return q.job(row) if row else None

    async def list_jobs(
        self, tenant_id: str, after: str | None, limit: int
    ) -> tuple[list[FineTuningJob], bool]:
        args: list[object] = [tenant_id]
        if after is not None:
            args += [after, tenant_id]
        args.append(limit + 1)
        sql = q.LIST_JOBS.format(after=q.JOBS_AFTER if after is not None else "")
        jobs = [q.job(r) for r in await self.pool.fetch(N(sql), *args)]
        return jobs[:limit], len(jobs) > limit

    async def claim_job(self, worker: str) -> FineTuningJob | None:
        now = time.time()
        sql = N(q.CLAIM_JOB.format(lock="FOR UPDATE SKIP LOCKED"))
        row = await self.pool.fetchrow(sql, worker, now, now, now)
        return q.job(row) if row else None

    async def update_job(
        self, job_id: str, changes: JobChanges, *, worker: str | None = None
    ) -> bool:
        sql, args = q.update_job(changes.columns(), fenced=worker is not None)
        args.append(job_id)
        if worker is not None:
            args.append(worker)
        status: str = await self.pool.execute(N(sql), *args)
        return not status.endswith(" 0")

    async def heartbeat_job(self, job_id: str, worker: str) -> bool | None:
        row = await self.pool.fetchrow(N(q.HEARTBEAT), time.time(), job_id, worker)
        return None if row is None else bool(row[0])

    async def request_cancel(self, tenant_id: str, job_id: str) -> FineTuningJob | None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(N(q.CANCEL_QUEUED), time.time(), job_id, tenant_id)
            await conn.execute(N(q.CANCEL_RUNNING), job_id, tenant_id)
        return await self.get_job(job_id, tenant_id)

    async def requeue_stale(
        self, before: float, max_requeues: int | None = None
    ) -> list[tuple[str, str]]:
        args = q.requeue_params(before, max_requeues, time.time())
        return [(r[0], r[1]) for r in await self.pool.fetch(N(q.REQUEUE_STALE), *args)]

    async def jobs_in_stage(self, stage: JobStage) -> list[FineTuningJob]:
        return [q.job(r) for r in await self.pool.fetch(N(q.JOBS_IN_STAGE), stage)]

    async def add_job_event(
        self,
        job_id: str,
        level: str,
        message: str,
        data: dict[str, float | int | str] | None = None,
    ) -> None:
        await self.pool.execute(
            N(q.INSERT_EVENT), job_id, level, message, q.event_data(data), time.time()
        )

    async def list_job_events(
        self, job_id: str, after: int | None, limit: int
    ) -> tuple[list[JobEvent], bool]:
        sql = q.LIST_EVENTS.format(after=q.EVENTS_AFTER if after is not None else "")
        args: list[object] = [job_id, *([after] if after is not None else []), limit + 1]
        events = [q.event(r) for r in await self.pool.fetch(N(sql), *args)]
        return events[:limit], len(events) > limit
