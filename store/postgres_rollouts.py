"""PostgreSQL statements for rollouts, alias decisions and consent lineage (`rollouts_sql`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import rollouts_sql as q
from store.records import AliasEvent, RolloutRecord
from store.training_sql import numbered as N

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]


class RolloutsMixinPG:
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def add_rollout(self, rollout: RolloutRecord) -> bool:
        status: str = await self.pool.execute(N(q.INSERT), *q.params(rollout))
        return status == "INSERT 0 1"

    async def get_rollout(self, tenant_id: str, rollout_id: str) -> RolloutRecord | None:
        row = await self.pool.fetchrow(N(q.GET), tenant_id, rollout_id)
        return q.rollout(row) if row else None

    async def list_rollouts(
        self, tenant_id: str, alias: str | None, limit: int
    ) -> list[RolloutRecord]:
        if alias is None:
            rows = await self.pool.fetch(N(q.LIST), tenant_id, limit)
        else:
            rows = await self.pool.fetch(N(q.LIST_OF_ALIAS), tenant_id, alias, limit)
        return [q.rollout(r) for r in rows]

    async def claim_rollouts(self, owner: str, lease_s: float) -> list[RolloutRecord]:
        now = time.time()
        rows = await self.pool.fetch(N(q.CLAIM), owner, now + lease_s, owner, now)
        return [q.rollout(r) for r in rows]

    async def save_rollout(
        self,
        rollout_id: str,
        owner: str,
        status: str,
        stage: str,
        state: str,
        finished_at: float | None,
    ) -> float | None:
        now = time.time()
        args = (status, stage, state, now, finished_at, rollout_id, owner)
        done: str = await self.pool.execute(N(q.SAVE), *args)
        return now if not done.endswith(" 0") else None

    async def end_rollout(
        self, tenant_id: str, rollout_id: str, status: str, state: str, read_at: float
    ) -> bool:
        now = time.time()
        args = (status, state, now, now, tenant_id, rollout_id, read_at)
        done: str = await self.pool.execute(N(q.END), *args)
        return not done.endswith(" 0")

    async def release_rollouts(self, owner: str) -> None:
        await self.pool.execute(N(q.RELEASE), owner)

    async def add_alias_event(self, event: AliasEvent) -> None:
        args = q.event_params(event, bool(event.forced), time.time())
        await self.pool.execute(N(q.ADD_ALIAS_EVENT), *args)

    async def consent_withdrawn(self, dataset_id: str) -> int:
        sql = N(q.CONSENT_WITHDRAWN.format(truth=""))
        return int(await self.pool.fetchval(sql, dataset_id) or 0)
