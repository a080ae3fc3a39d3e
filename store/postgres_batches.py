"""PostgreSQL statements for batches and their per-line results."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import batches_sql as q
from store.postgres_quotas import QuotasMixinPG
from store.quotas_sql import A_BATCH
from store.records import BatchRecord, BatchResult, BatchStatus, Usage
from store.training_sql import numbered as N

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]


def _changed(status: str) -> bool:
    """Whether a command status such as 'UPDATE 1' changed a row."""
    return not status.endswith(" 0")


class BatchesMixinPG(QuotasMixinPG):
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def add_batch(self, batch: BatchRecord, limits: Usage | None = None) -> str | None:
        at = batch.created_at
        async with self._admission(batch.tenant_id, at, limits, A_BATCH) as (conn, over):
            if over is None:
                await conn.execute(N(q.INSERT), *q.params(batch))
        return over

    async def get_batch(self, tenant_id: str, batch_id: str) -> BatchRecord | None:
        row = await self.pool.fetchrow(N(q.GET), tenant_id, batch_id)
        return q.batch(row) if row else None

    async def list_batches(
        self, tenant_id: str, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        args: list[object] = [tenant_id, *((after, tenant_id) if after is not None else ())]
        sql = q.LIST.format(after=q.AFTER if after is not None else "")
        found = [q.batch(r) for r in await self.pool.fetch(N(sql), *args, limit + 1)]
        return found[:limit], len(found) > limit

    async def cancel_batch(self, tenant_id: str, batch_id: str) -> BatchRecord | None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(N(q.CANCEL), time.time(), tenant_id, batch_id)
            row = await conn.fetchrow(N(q.GET), tenant_id, batch_id)
        return q.batch(row) if row else None

    async def claim_batch(self, worker: str) -> BatchRecord | None:
        now = time.time()
        sql = N(q.CLAIM.format(lock="FOR UPDATE SKIP LOCKED"))
        row = await self.pool.fetchrow(sql, worker, now, now)
        return q.batch(row) if row else None

    async def heartbeat_batch(self, batch_id: str, worker: str) -> BatchStatus | None:
        status = await self.pool.fetchval(N(q.HEARTBEAT), time.time(), batch_id, worker)
        return status  # type: ignore[no-any-return]

    async def batch_finalizing(self, batch_id: str, worker: str) -> bool:
        return _changed(await self.pool.execute(N(q.FINALIZING), time.time(), batch_id, worker))

    async def finish_batch(
        self,
        batch_id: str,
        worker: str,
        status: BatchStatus,
        *,
        output_file_id: str | None = None,
        error_file_id: str | None = None,
        error: str | None = None,
    ) -> bool:
        args = (status, time.time(), output_file_id, error_file_id, error, batch_id, worker)
        return _changed(await self.pool.execute(N(q.finish_sql(status)), *args))

    async def release_batch(self, batch_id: str, worker: str) -> bool:
        return _changed(await self.pool.execute(N(q.RELEASE), batch_id, worker))

    async def requeue_stale_batches(
        self, before: float, max_requeues: int
    ) -> list[tuple[str, str]]:
        args = q.requeue_params(before, max_requeues, time.time())
        return [(r[0], r[1]) for r in await self.pool.fetch(N(q.REQUEUE_STALE), *args)]

    async def add_batch_result(self, result: BatchResult) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            written = await conn.execute(N(q.INSERT_RESULT), *q.result_params(result))
            if not _changed(written):
                return False
            await conn.execute(N(q.COUNT_RESULT), *q.counts(result))
        return True

    async def batch_result_lines(self, batch_id: str) -> set[int]:
        return {int(r[0]) for r in await self.pool.fetch(N(q.RESULT_LINES), batch_id)}

    async def batch_results(self, batch_id: str) -> list[BatchResult]:
        return [q.result(r) for r in await self.pool.fetch(N(q.RESULTS), batch_id)]
