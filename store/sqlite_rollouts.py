"""SQLite statements for rollouts, alias decisions and consent lineage (`rollouts_sql`)."""

from __future__ import annotations

import time

from store import rollouts_sql as q
from store.records import AliasEvent, RolloutRecord
from store.sqlite_capture import SQLiteMixin


class RolloutsMixin(SQLiteMixin):
    async def add_rollout(self, rollout: RolloutRecord) -> bool:
        return (await self._write(q.INSERT, q.params(rollout))).rowcount == 1

    async def get_rollout(self, tenant_id: str, rollout_id: str) -> RolloutRecord | None:
        async with self.db.execute(q.GET, (tenant_id, rollout_id)) as cur:
            row = await cur.fetchone()
        return q.rollout(row) if row else None

    async def list_rollouts(
        self, tenant_id: str, alias: str | None, limit: int
    ) -> list[RolloutRecord]:
        sql, args = (
            (q.LIST, (tenant_id, limit))
            if alias is None
            else (q.LIST_OF_ALIAS, (tenant_id, alias, limit))
        )
        async with self.db.execute(sql, args) as cur:
            return [q.rollout(r) for r in await cur.fetchall()]

    async def claim_rollouts(self, owner: str, lease_s: float) -> list[RolloutRecord]:
        now = time.time()
        async with (
            self.transaction(),
            self.db.execute(q.CLAIM, (owner, now + lease_s, owner, now)) as cur,
        ):
            return [q.rollout(r) for r in await cur.fetchall()]

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
        return now if (await self._write(q.SAVE, args)).rowcount == 1 else None

    async def end_rollout(
        self, tenant_id: str, rollout_id: str, status: str, state: str, read_at: float
    ) -> bool:
        now = time.time()
        args = (status, state, now, now, tenant_id, rollout_id, read_at)
        return (await self._write(q.END, args)).rowcount == 1

    async def release_rollouts(self, owner: str) -> None:
        await self._write(q.RELEASE, (owner,))

    async def add_alias_event(self, event: AliasEvent) -> None:
        await self._write(q.ADD_ALIAS_EVENT, q.event_params(event, int(event.forced), time.time()))

    async def consent_withdrawn(self, dataset_id: str) -> int:
        async with self.db.execute(q.CONSENT_WITHDRAWN.format(truth="= 1"), (dataset_id,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
