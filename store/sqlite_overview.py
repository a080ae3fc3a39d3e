"""SQLite statements for the console's overview: traffic per tenant in buckets, active work."""

from __future__ import annotations

from store import overview_sql as q
from store.evals_sql import loop, run
from store.records import ActiveWork, OwnedKind, TrafficBucket
from store.sqlite_capture import SQLiteMixin
from store.training_sql import job


class OverviewMixin(SQLiteMixin):
    async def traffic(
        self, tenant_id: str | None, since: float, until: float, bucket_s: float
    ) -> list[TrafficBucket]:
        sql = q.traffic_sql(q.BUCKET_SQLITE, tenant_id)
        async with self.db.execute(sql, q.traffic_args(tenant_id, since, until, bucket_s)) as cur:
            return [q.bucket(r) for r in await cur.fetchall()]

    async def active_work(self, tenant_id: str | None, limit: int) -> ActiveWork:
        args = q.active_args(tenant_id, limit)
        async with self.db.execute(q.active_sql(q.ACTIVE_JOBS, tenant_id), args) as cur:
            jobs = [job(r) for r in await cur.fetchall()]
        async with self.db.execute(q.active_sql(q.ACTIVE_EVALS, tenant_id), args) as cur:
            evals = [run(r) for r in await cur.fetchall()]
        async with self.db.execute(q.active_sql(q.ACTIVE_LOOPS, tenant_id), args) as cur:
            loops = [loop(r) for r in await cur.fetchall()]
        return ActiveWork(jobs, evals, loops)

    async def owner_of(self, kind: OwnedKind, object_id: str) -> str | None:
        async with self.db.execute(q.OWNER_OF[kind], (object_id,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None
