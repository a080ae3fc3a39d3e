"""SQLite statements for fine-tuning jobs' per-epoch checkpoints."""

from __future__ import annotations

from store import checkpoints_sql as q
from store.records import JobCheckpoint
from store.sqlite_capture import SQLiteMixin


class CheckpointsMixin(SQLiteMixin):
    async def add_job_checkpoint(self, checkpoint: JobCheckpoint) -> None:
        await self._write(q.INSERT, q.params(checkpoint))

    async def list_job_checkpoints(
        self, tenant_id: str, job_id: str, after: str | None, limit: int
    ) -> tuple[list[JobCheckpoint], bool]:
        sql, args = q.list_query(tenant_id, job_id, after, limit)
        async with self.db.execute(sql, args) as cur:
            found = [q.checkpoint(r) for r in await cur.fetchall()]
        return found[:limit], len(found) > limit

    async def get_job_checkpoint(self, tenant_id: str, checkpoint_id: str) -> JobCheckpoint | None:
        async with self.db.execute(q.GET, (tenant_id, checkpoint_id)) as cur:
            row = await cur.fetchone()
        return q.checkpoint(row) if row else None

    async def clear_job_checkpoints(self, job_id: str) -> int:
        return (await self._write(q.CLEAR, (job_id,))).rowcount

    async def set_checkpoint_version(self, checkpoint_id: str, adapter_version: str) -> bool:
        return (await self._write(q.SET_VERSION, (adapter_version, checkpoint_id))).rowcount > 0
