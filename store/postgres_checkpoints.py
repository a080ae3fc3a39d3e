"""PostgreSQL statements for fine-tuning jobs' per-epoch checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import checkpoints_sql as q
from store.records import JobCheckpoint
from store.training_sql import numbered as N

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class CheckpointsMixinPG:
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def add_job_checkpoint(self, checkpoint: JobCheckpoint) -> None:
        await self.pool.execute(N(q.INSERT), *q.params(checkpoint))

    async def list_job_checkpoints(
        self, tenant_id: str, job_id: str, after: str | None, limit: int
    ) -> tuple[list[JobCheckpoint], bool]:
        sql, args = q.list_query(tenant_id, job_id, after, limit)
        found = [q.checkpoint(r) for r in await self.pool.fetch(N(sql), *args)]
        return found[:limit], len(found) > limit

    async def get_job_checkpoint(self, tenant_id: str, checkpoint_id: str) -> JobCheckpoint | None:
        row = await self.pool.fetchrow(N(q.GET), tenant_id, checkpoint_id)
        return q.checkpoint(row) if row else None

    async def clear_job_checkpoints(self, job_id: str) -> int:
        return _count(await self.pool.execute(N(q.CLEAR), job_id))

    async def set_checkpoint_version(self, checkpoint_id: str, adapter_version: str) -> bool:
        status = await self.pool.execute(N(q.SET_VERSION), adapter_version, checkpoint_id)
        return _count(status) > 0
