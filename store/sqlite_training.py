"""SQLite statements for uploaded files, dataset snapshots and fine-tuning jobs."""

from __future__ import annotations

import time
from collections.abc import Collection

from store import quotas_sql
from store import training_sql as q
from store.records import (
    Dataset,
    FileObject,
    FineTuningJob,
    JobChanges,
    JobEvent,
    JobStage,
    Usage,
)
from store.sqlite_erasure import add_sources
from store.sqlite_quotas import QuotasMixin


class TrainingMixin(QuotasMixin):
    async def list_optouts(self, tenant_id: str) -> set[str]:
        async with self.db.execute(q.LIST_OPTOUTS, (tenant_id,)) as cur:
            return {r[0] for r in await cur.fetchall()}

    async def add_file(self, f: FileObject, limits: Usage | None = None) -> str | None:
        adding = quotas_sql.a_file(f)
        async with self._admission(f.tenant_id, f.created_at, limits, adding) as over:
            if over is None:
                await self.db.execute(q.INSERT_FILE, q.file_params(f))
        return over

    async def get_file(self, tenant_id: str, file_id: str) -> FileObject | None:
        async with self.db.execute(q.GET_FILE, (tenant_id, file_id)) as cur:
            row = await cur.fetchone()
        return q.file(row) if row else None

    async def list_files(self, tenant_id: str) -> list[FileObject]:
        async with self.db.execute(q.LIST_FILES, (tenant_id,)) as cur:
            return [q.file(r) for r in await cur.fetchall()]

    async def delete_file(self, tenant_id: str, file_id: str) -> bool:
        return (await self._write(q.DELETE_FILE, (tenant_id, file_id))).rowcount > 0

    async def add_dataset(
        self,
        d: Dataset,
        completion_ids: Collection[str],
        limits: Usage | None = None,
        *,
        flagged: Collection[str] = (),
    ) -> str | None:
        adding = quotas_sql.A_DATASET
        async with self._admission(d.tenant_id, d.created_at, limits, adding) as over:
            if over is not None:
                return over
            await self.db.execute(q.INSERT_DATASET, q.dataset_params(d))
            await add_sources(self.db, d.id, completion_ids, flagged)
        return None

    async def get_dataset(self, tenant_id: str, dataset_id: str) -> Dataset | None:
        async with self.db.execute(q.GET_DATASET, (tenant_id, dataset_id)) as cur:
            row = await cur.fetchone()
        return q.dataset(row) if row else None

    async def list_datasets(self, tenant_id: str) -> list[Dataset]:
        async with self.db.execute(q.LIST_DATASETS, (tenant_id,)) as cur:
            return [q.dataset(r) for r in await cur.fetchall()]

    async def create_job(self, job: FineTuningJob, limits: Usage | None = None) -> str | None:
        adding = quotas_sql.a_job(job)
        async with self._admission(job.tenant_id, job.created_at, limits, adding) as over:
            if over is None:
                await self.db.execute(q.INSERT_JOB, q.job_params(job))
        return over

    async def get_job(self, job_id: str, tenant_id: str | None = None) -> FineTuningJob | None:
        sql, args = (
            (q.GET_JOB, (job_id,))
            if tenant_id is None
            else (
                q.GET_TENANT_JOB,
                (job_id, tenant_id),
            )
        )
        async with self.db.execute(sql, args) as cur:
            row = await cur.fetchone()
        return q.job(row) if row else None

    async def list_jobs(
        self, tenant_id: str, after: str | None, limit: int
    ) -> tuple[list[FineTuningJob], bool]:
        args: list[object] = [tenant_id]
        if after is not None:
            args += [after, tenant_id]
        sql = q.LIST_JOBS.format(after=q.JOBS_AFTER if after is not None else "")
        async with self.db.execute(sql, [*args, limit + 1]) as cur:
            jobs = [q.job(r) for r in await cur.fetchall()]
        return jobs[:limit], len(jobs) > limit

    async def claim_job(self, worker: str) -> FineTuningJob | None:
        now = time.time()
        sql = q.CLAIM_JOB.format(lock="")
        async with self.transaction(), self.db.execute(sql, (worker, now, now, now)) as cur:
            row = await cur.fetchone()
        return q.job(row) if row else None

    async def update_job(
        self, job_id: str, changes: JobChanges, *, worker: str | None = None
    ) -> bool:
        sql, args = q.update_job(changes.columns(), fenced=worker is not None)
        args.append(job_id)
        if worker is not None:
            args.append(worker)
        return (await self._write(sql, args)).rowcount > 0

    async def heartbeat_job(self, job_id: str, worker: str) -> bool | None:
        args = (time.time(), job_id, worker)
        async with self.transaction(), self.db.execute(q.HEARTBEAT, args) as cur:
            row = await cur.fetchone()
        return None if row is None else bool(row[0])

    async def request_cancel(self, tenant_id: str, job_id: str) -> FineTuningJob | None:
        async with self.transaction():
            await self.db.execute(q.CANCEL_QUEUED, (time.time(), job_id, tenant_id))
            await self.db.execute(q.CANCEL_RUNNING, (job_id, tenant_id))
        return await self.get_job(job_id, tenant_id)

    async def requeue_stale(
        self, before: float, max_requeues: int | None = None
    ) -> list[tuple[str, str]]:
        args = q.requeue_params(before, max_requeues, time.time())
        async with self.transaction(), self.db.execute(q.REQUEUE_STALE, args) as cur:
            return [(r[0], r[1]) for r in await cur.fetchall()]

    async def jobs_in_stage(self, stage: JobStage) -> list[FineTuningJob]:
        async with self.db.execute(q.JOBS_IN_STAGE, (stage,)) as cur:
            return [q.job(r) for r in await cur.fetchall()]

    async def add_job_event(
        self,
        job_id: str,
        level: str,
        message: str,
        data: dict[str, float | int | str] | None = None,
    ) -> None:
        await self._write(q.INSERT_EVENT, (job_id, level, message, q.event_data(data), time.time()))

    async def list_job_events(
        self, job_id: str, after: int | None, limit: int
    ) -> tuple[list[JobEvent], bool]:
        sql = q.LIST_EVENTS.format(after=q.EVENTS_AFTER if after is not None else "")
        args: list[object] = [job_id, *([after] if after is not None else []), limit + 1]
        async with self.db.execute(sql, args) as cur:
            events = [q.event(r) for r in await cur.fetchall()]
        return events[:limit], len(events) > limit
