"""PostgreSQL statements for queued dataset builds."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import builds_sql as q
from store.records import BuildStatus, DatasetBuild
from store.training_sql import numbered as N

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class BuildsMixinPG:
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def add_dataset_build(self, build: DatasetBuild) -> None:
        await self.pool.execute(N(q.INSERT_BUILD), *q.build_params(build))

    async def get_dataset_build(self, tenant_id: str, build_id: str) -> DatasetBuild | None:
        row = await self.pool.fetchrow(N(q.GET_BUILD), tenant_id, build_id)
        return q.build(row) if row else None

    async def claim_dataset_build(self, worker: str) -> DatasetBuild | None:
        now = time.time()
        sql = N(q.CLAIM_BUILD.format(lock="FOR UPDATE SKIP LOCKED"))
        row = await self.pool.fetchrow(sql, worker, now, now)
        return q.build(row) if row else None

    async def heartbeat_dataset_build(self, build_id: str, worker: str) -> bool:
        status: str = await self.pool.execute(N(q.HEARTBEAT_BUILD), time.time(), build_id, worker)
        return _count(status) > 0

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
        done: str = await self.pool.execute(N(q.FINISH_BUILD), *args)
        return _count(done) > 0

    async def requeue_stale_builds(self, before: float, max_requeues: int) -> list[tuple[str, str]]:
        args = q.requeue_params(before, max_requeues, time.time())
        return [(r[0], r[1]) for r in await self.pool.fetch(N(q.REQUEUE_STALE_BUILDS), *args)]

    async def purge_dataset_builds(self, before: float) -> int:
        return _count(await self.pool.execute(N(q.PURGE_BUILDS), before))
