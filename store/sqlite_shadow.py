"""SQLite statements for shared canary counts and shadow evaluation (`shadow_sql`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence

from store import shadow_sql as q
from store.errors import Conflict
from store.records import (
    ArmCounts,
    CanaryDelta,
    Shadow,
    ShadowPair,
    ShadowSummary,
    ShadowVerdict,
)
from store.sqlite_capture import SQLiteMixin


class ShadowMixin(SQLiteMixin):
    async def add_canary_counts(self, deltas: Sequence[CanaryDelta]) -> None:
        if not deltas:
            return
        async with self.transaction():
            await self.db.executemany(q.ADD_ARM_COUNTS, q.arm_rows(deltas))
            await self.db.executemany(q.ADD_LATENCY, q.latency_rows(deltas))

    async def canary_counts(self, canary_id: str) -> dict[str, ArmCounts]:
        async with self.db.execute(q.ARM_COUNTS, (canary_id,)) as cur:
            arms = await cur.fetchall()
        async with self.db.execute(q.LATENCY, (canary_id,)) as cur:
            latency = await cur.fetchall()
        return q.arm_counts(arms, latency)

    async def add_shadow(self, shadow: Shadow) -> None:
        try:
            await self._write(q.INSERT_SHADOW, q.shadow_params(shadow))
        except sqlite3.IntegrityError:
            raise Conflict(f"alias '{shadow.alias}' already has an active shadow") from None

    async def active_shadows(self) -> list[Shadow]:
        async with self.db.execute(q.ACTIVE_SHADOWS) as cur:
            return [q.shadow(r) for r in await cur.fetchall()]

    async def shadows_of(self, tenant_id: str, alias: str) -> list[Shadow]:
        async with self.db.execute(q.SHADOWS_OF, (tenant_id, alias)) as cur:
            return [q.shadow(r) for r in await cur.fetchall()]

    async def get_shadow(self, shadow_id: str) -> Shadow | None:
        async with self.db.execute(q.GET_SHADOW, (shadow_id,)) as cur:
            row = await cur.fetchone()
        return q.shadow(row) if row else None

    async def end_shadow(self, shadow_id: str, reason: str) -> bool:
        cur = await self._write(q.END_SHADOW, (reason, time.time(), shadow_id))
        return cur.rowcount > 0

    async def add_shadow_skips(self, skipped: Mapping[str, int]) -> None:
        rows = [(n, shadow_id) for shadow_id, n in sorted(skipped.items()) if n]
        if rows:
            async with self.transaction():
                await self.db.executemany(q.ADD_SKIPS, rows)

    async def add_shadow_pair(self, pair: ShadowPair) -> None:
        await self._write(q.INSERT_PAIR, q.pair_params(pair))

    async def ungraded_shadow_pairs(self, limit: int) -> list[ShadowPair]:
        async with self.db.execute(q.UNGRADED, (limit,)) as cur:
            return [q.pair(r) for r in await cur.fetchall()]

    async def shadow_pairs(
        self, tenant_id: str, alias: str, version: str, limit: int
    ) -> list[ShadowPair]:
        async with self.db.execute(q.PAIRS_OF, (tenant_id, alias, version, limit)) as cur:
            return [q.pair(r) for r in await cur.fetchall()]

    async def grade_shadow_pair(
        self,
        pair_id: str,
        verdict: ShadowVerdict,
        live_score: float | None,
        candidate_score: float | None,
        reasons: str,
    ) -> bool:
        args = (verdict, live_score, candidate_score, reasons, time.time(), pair_id)
        return (await self._write(q.GRADE_PAIR, args)).rowcount > 0

    async def shadow_summary(self, tenant_id: str, alias: str, version: str) -> ShadowSummary:
        args = (tenant_id, alias, version)
        async with self.db.execute(q.SUMMARY, args) as cur:
            row = await cur.fetchone()
        async with self.db.execute(q.SKIPPED, args) as cur:
            skipped = await cur.fetchone()
        assert row is not None and skipped is not None
        return q.summary(row, int(skipped[0]))
