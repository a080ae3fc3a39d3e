"""SQLite statements for queued dataset builds."""

from __future__ import annotations

import time

from store import builds_sql as q
from store.records import BuildStatus, DatasetBuild
from store.sqlite_capture import SQLiteMixin


class BuildsMixin(SQLiteMixin):
    async def add_dataset_build(self, build: DatasetBuild) -> None:
        await self._write(q.INSERT_BUILD, q.build_params(build))

    async def get_dataset_build(self, tenant_id: str, build_id: str) -> DatasetBuild | None:
        async with self.db.execute(q.GET_BUILD, (tenant_id, build_id)) as cur:
            row = await cur.fetchone()
        return q.build(row) if row else None

    async def claim_dataset_build(self, worker: str) -> DatasetBuild | None:
        # A read first: an idle worker polls, and only a queued build is worth the write lock.
        async with self.db.execute(q.ANY_QUEUED_BUILD) as cur:
            if await cur.fetchone() is None:
                return None
        now = time.time()
        sql = q.CLAIM_BUILD.format(lock="")
        async with self.transaction(), self.db.execute(sql, (worker, now, now)) as cur:
            row = await cur.fetchone()
        return q.build(row) if row else None

    async def heartbeat_dataset_build(self, build_id: str, worker: str) -> bool:
        args = (time.time(), build_id, worker)
        return (await self._write(q.HEARTBEAT_BUILD, args)).rowcount > 0

    async def finish_dataset_build(
        self,
        build_id: str,
        worker: str,
        status: BuildStatus,
        *,
        dataset_id: str | None = None,
        report: str | None = None,
        error: str | None = None,
    ) -> bool:
        args = (status, dataset_id, report, error, time.time(), build_id, worker)
        return (await self._write(q.FINISH_BUILD, args)).rowcount > 0

    async def requeue_stale_builds(self, before: float, max_requeues: int) -> list[tuple[str, str]]:
        args = q.requeue_params(before, max_requeues, time.time())
        async with self.transaction(), self.db.execute(q.REQUEUE_STALE_BUILDS, args) as cur:
            return [(r[0], r[1]) for r in await cur.fetchall()]

    async def purge_dataset_builds(self, before: float) -> int:
        return (await self._write(q.PURGE_BUILDS, (before,))).rowcount
