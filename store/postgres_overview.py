"""PostgreSQL statements for the console's overview: traffic per tenant in buckets, active work."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import overview_sql as q
from store.evals_sql import loop, run
from store.records import ActiveWork, OwnedKind, TrafficBucket
from store.training_sql import job
from store.training_sql import numbered as N

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]


class OverviewMixinPG:
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def traffic(
        self, tenant_id: str | None, since: float, until: float, bucket_s: float
    ) -> list[TrafficBucket]:
        sql = N(q.traffic_sql(q.BUCKET_PG, tenant_id))
        args = q.traffic_args(tenant_id, float(since), float(until), float(bucket_s))
        return [q.bucket(r) for r in await self.pool.fetch(sql, *args)]

    async def active_work(self, tenant_id: str | None, limit: int) -> ActiveWork:
        args = q.active_args(tenant_id, limit)
        jobs = await self.pool.fetch(N(q.active_sql(q.ACTIVE_JOBS, tenant_id)), *args)
        evals = await self.pool.fetch(N(q.active_sql(q.ACTIVE_EVALS, tenant_id)), *args)
        loops = await self.pool.fetch(N(q.active_sql(q.ACTIVE_LOOPS, tenant_id)), *args)
        return ActiveWork([job(r) for r in jobs], [run(r) for r in evals], [loop(r) for r in loops])

    async def owner_of(self, kind: OwnedKind, object_id: str) -> str | None:
        owner = await self.pool.fetchval(N(q.OWNER_OF[kind]), object_id)
        return None if owner is None else str(owner)
