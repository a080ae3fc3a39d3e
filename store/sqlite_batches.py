"""SQLite statements for batches and their per-line results."""

from __future__ import annotations

import time

from store import batches_sql as q
from store.quotas_sql import A_BATCH
from store.records import BatchRecord, BatchResult, BatchStatus, Usage
from store.sqlite_quotas import QuotasMixin


class BatchesMixin(QuotasMixin):
    async def add_batch(self, batch: BatchRecord, limits: Usage | None = None) -> str | None:
        async with self._admission(batch.tenant_id, batch.created_at, limits, A_BATCH) as over:
            if over is None:
                await self.db.execute(q.INSERT, q.params(batch))
        return over

    async def get_batch(self, tenant_id: str, batch_id: str) -> BatchRecord | None:
        async with self.db.execute(q.GET, (tenant_id, batch_id)) as cur:
            row = await cur.fetchone()
        return q.batch(row) if row else None

    async def list_batches(
        self, tenant_id: str, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        args: list[object] = [tenant_id, *((after, tenant_id) if after is not None else ())]
        sql = q.LIST.format(after=q.AFTER if after is not None else "")
        async with self.db.execute(sql, [*args, limit + 1]) as cur:
            found = [q.batch(r) for r in await cur.fetchall()]
        return found[:limit], len(found) > limit

    async def cancel_batch(self, tenant_id: str, batch_id: str) -> BatchRecord | None:
        async with self.transaction():
            await self.db.execute(q.CANCEL, (time.time(), tenant_id, batch_id))
            async with self.db.execute(q.GET, (tenant_id, batch_id)) as cur:
                row = await cur.fetchone()
        return q.batch(row) if row else None

    async def claim_batch(self, worker: str) -> BatchRecord | None:
        now = time.time()
        sql = q.CLAIM.format(lock="")
        async with self.transaction(), self.db.execute(sql, (worker, now, now)) as cur:
            row = await cur.fetchone()
        return q.batch(row) if row else None

    async def heartbeat_batch(self, batch_id: str, worker: str) -> BatchStatus | None:
        args = (time.time(), batch_id, worker)
        async with self.transaction(), self.db.execute(q.HEARTBEAT, args) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def batch_finalizing(self, batch_id: str, worker: str) -> bool:
        return (await self._write(q.FINALIZING, (time.time(), batch_id, worker))).rowcount > 0

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
        return (await self._write(q.finish_sql(status), args)).rowcount > 0

    async def release_batch(self, batch_id: str, worker: str) -> bool:
        return (await self._write(q.RELEASE, (batch_id, worker))).rowcount > 0

    async def requeue_stale_batches(
        self, before: float, max_requeues: int
    ) -> list[tuple[str, str]]:
        args = q.requeue_params(before, max_requeues, time.time())
        async with self.transaction(), self.db.execute(q.REQUEUE_STALE, args) as cur:
            return [(r[0], r[1]) for r in await cur.fetchall()]

    async def add_batch_result(self, result: BatchResult) -> bool:
        async with self.transaction():
            cur = await self.db.execute(q.INSERT_RESULT, q.result_params(result))
            if cur.rowcount == 0:
                return False
            await self.db.execute(q.COUNT_RESULT, q.counts(result))
        return True

    async def batch_result_lines(self, batch_id: str) -> set[int]:
        async with self.db.execute(q.RESULT_LINES, (batch_id,)) as cur:
            return {int(r[0]) for r in await cur.fetchall()}

    async def batch_results(self, batch_id: str) -> list[BatchResult]:
        async with self.db.execute(q.RESULTS, (batch_id,)) as cur:
            return [q.result(r) for r in await cur.fetchall()]
