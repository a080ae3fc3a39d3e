"""PostgreSQL statements for shared canary counts and shadow evaluation (`shadow_sql`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

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
from store.training_sql import numbered as N

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]


class ShadowMixinPG:
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def add_canary_counts(self, deltas: Sequence[CanaryDelta]) -> None:
        if not deltas:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(N(q.ADD_ARM_COUNTS), q.arm_rows(deltas))
            await conn.executemany(N(q.ADD_LATENCY), q.latency_rows(deltas))

    async def canary_counts(self, canary_id: str) -> dict[str, ArmCounts]:
        arms = await self.pool.fetch(N(q.ARM_COUNTS), canary_id)
        latency = await self.pool.fetch(N(q.LATENCY), canary_id)
        return q.arm_counts(arms, latency)

    async def add_shadow(self, shadow: Shadow) -> None:
        try:
            await self.pool.execute(N(q.INSERT_SHADOW), *q.shadow_params(shadow))
        except asyncpg.UniqueViolationError:
            raise Conflict(f"alias '{shadow.alias}' already has an active shadow") from None

    async def active_shadows(self) -> list[Shadow]:
        return [q.shadow(r) for r in await self.pool.fetch(q.ACTIVE_SHADOWS)]

    async def shadows_of(self, tenant_id: str, alias: str) -> list[Shadow]:
        return [q.shadow(r) for r in await self.pool.fetch(N(q.SHADOWS_OF), tenant_id, alias)]

    async def get_shadow(self, shadow_id: str) -> Shadow | None:
        row = await self.pool.fetchrow(N(q.GET_SHADOW), shadow_id)
        return q.shadow(row) if row else None

    async def end_shadow(self, shadow_id: str, reason: str) -> bool:
        status: str = await self.pool.execute(N(q.END_SHADOW), reason, time.time(), shadow_id)
        return not status.endswith(" 0")

    async def add_shadow_skips(self, skipped: Mapping[str, int]) -> None:
        rows = [(n, shadow_id) for shadow_id, n in sorted(skipped.items()) if n]
        if rows:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.executemany(N(q.ADD_SKIPS), rows)

    async def add_shadow_pair(self, pair: ShadowPair) -> None:
        await self.pool.execute(N(q.INSERT_PAIR), *q.pair_params(pair))

    async def ungraded_shadow_pairs(self, limit: int) -> list[ShadowPair]:
        return [q.pair(r) for r in await self.pool.fetch(N(q.UNGRADED), limit)]

    async def shadow_pairs(
        self, tenant_id: str, alias: str, version: str, limit: int
    ) -> list[ShadowPair]:
        rows = await self.pool.fetch(N(q.PAIRS_OF), tenant_id, alias, version, limit)
        return [q.pair(r) for r in rows]

    async def grade_shadow_pair(
        self,
        pair_id: str,
        verdict: ShadowVerdict,
        live_score: float | None,
        candidate_score: float | None,
        reasons: str,
    ) -> bool:
        args = (verdict, live_score, candidate_score, reasons, time.time(), pair_id)
        status: str = await self.pool.execute(N(q.GRADE_PAIR), *args)
        return not status.endswith(" 0")

    async def shadow_summary(self, tenant_id: str, alias: str, version: str) -> ShadowSummary:
        row = await self.pool.fetchrow(N(q.SUMMARY), tenant_id, alias, version)
        skipped = await self.pool.fetchval(N(q.SKIPPED), tenant_id, alias, version)
        assert row is not None
        return q.summary(row, int(skipped))
