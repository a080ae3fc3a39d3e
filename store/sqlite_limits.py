"""SQLite statements for limits and counters (reservations run inside BEGIN IMMEDIATE)."""

from __future__ import annotations

import asyncio
import sqlite3

from store import limits_sql as q
from store.records import Charge, LimitSet, Reservation
from store.sqlite_capture import SQLiteMixin

_ATTEMPTS = 20


class LimitsMixin(SQLiteMixin):
    async def set_limits(self, limits: LimitSet) -> None:
        if limits.unlimited:
            await self._write(q.DELETE_LIMITS, (limits.tenant_id, limits.key_id))
        else:
            await self._write(q.SET_LIMITS, q.limits_params(limits))

    async def get_limits(self, tenant_id: str, key_id: str) -> LimitSet | None:
        async with self.db.execute(q.GET_LIMITS, (tenant_id, key_id)) as cur:
            row = await cur.fetchone()
        return q.limits(row) if row else None

    async def limits_for(self, tenant_id: str, key_id: str) -> list[LimitSet]:
        async with self.db.execute(q.LIMITS_FOR, (tenant_id, key_id)) as cur:
            return [q.limits(r) for r in await cur.fetchall()]

    async def reserve(self, charges: list[Charge]) -> Reservation:
        """All charges in one BEGIN IMMEDIATE transaction. SQLite's busy wait is not fair: when
        other processes keep the file busy past the busy timeout, the whole (rolled back)
        transaction is tried again."""
        for attempt in range(_ATTEMPTS):
            try:
                return await self._reserve_all(charges)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == _ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _reserve_all(self, charges: list[Charge]) -> Reservation:
        used = [0] * len(charges)
        try:
            async with self.transaction():
                for i in q.in_lock_order(charges):
                    used[i] = await self._reserve_one(charges[i], i)
        except q.Denied as denied:
            return Reservation(False, await self.counter_usage(charges), denied.index)
        return Reservation(True, used)

    async def _reserve_one(self, charge: Charge, index: int) -> int:
        if charge.amount > charge.limit:
            raise q.Denied(index)
        async with self.db.execute(q.RESERVE, q.reserve_params(charge)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise q.Denied(index)
        return int(row[0])

    async def settle(self, adjustments: list[Charge]) -> None:
        async with self.transaction():
            await self.db.executemany(q.SETTLE, [q.settle_params(c) for c in adjustments])

    async def counter_usage(self, charges: list[Charge]) -> list[int]:
        used = []
        for c in charges:
            async with self.db.execute(q.USED, (c.scope, c.window)) as cur:
                row = await cur.fetchone()
            used.append(int(row[0]) if row else 0)
        return used

    async def purge_counters(self, before: float) -> int:
        cur = await self._write(q.PURGE, (before,))
        return cur.rowcount
