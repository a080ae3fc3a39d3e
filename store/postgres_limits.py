"""PostgreSQL statements for limits and counters (a reservation is one transaction whose
conditional upserts lock the counter rows they touch, in a fixed order)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import limits_sql as q
from store.records import Charge, LimitSet, Reservation
from store.training_sql import numbered as N

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]


class LimitsMixinPG:
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def set_limits(self, limits: LimitSet) -> None:
        if limits.unlimited:
            await self.pool.execute(N(q.DELETE_LIMITS), limits.tenant_id, limits.key_id)
        else:
            await self.pool.execute(N(q.SET_LIMITS), *q.limits_params(limits))

    async def get_limits(self, tenant_id: str, key_id: str) -> LimitSet | None:
        row = await self.pool.fetchrow(N(q.GET_LIMITS), tenant_id, key_id)
        return q.limits(row) if row else None

    async def limits_for(self, tenant_id: str, key_id: str) -> list[LimitSet]:
        return [q.limits(r) for r in await self.pool.fetch(N(q.LIMITS_FOR), tenant_id, key_id)]

    async def reserve(self, charges: list[Charge]) -> Reservation:
        used = [0] * len(charges)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                for i in q.in_lock_order(charges):
                    used[i] = await _reserve_one(conn, charges[i], i)
        except q.Denied as denied:
            return Reservation(False, await self.counter_usage(charges), denied.index)
        return Reservation(True, used)

    async def settle(self, adjustments: list[Charge]) -> None:
        ordered = [adjustments[i] for i in q.in_lock_order(adjustments)]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(N(q.SETTLE), [q.settle_params(c) for c in ordered])

    async def counter_usage(self, charges: list[Charge]) -> list[int]:
        used = []
        for c in charges:
            value = await self.pool.fetchval(N(q.USED), c.scope, c.window)
            used.append(int(value or 0))
        return used

    async def purge_counters(self, before: float) -> int:
        status: str = await self.pool.execute(N(q.PURGE), before)
        return int(status.rsplit(" ", 1)[-1])


async def _reserve_one(conn: Conn, charge: Charge, index: int) -> int:
    if charge.amount > charge.limit:
        raise q.Denied(index)
    value = await conn.fetchval(N(q.RESERVE), *q.reserve_params(charge))
    if value is None:
        raise q.Denied(index)
    return int(value)
