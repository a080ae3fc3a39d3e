"""PostgreSQL statements for per-tenant quotas: overrides, usage, and admissions under them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import quotas_sql as q
from store.records import TenantQuotas, Usage
from store.training_sql import numbered as N

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]


class QuotasMixinPG:
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def set_quotas(self, quotas: TenantQuotas) -> None:
        if quotas.unset:
            await self.pool.execute(N(q.DELETE_QUOTAS), quotas.tenant_id)
        else:
            await self.pool.execute(N(q.SET_QUOTAS), *q.quotas_params(quotas))

    async def get_quotas(self, tenant_id: str) -> TenantQuotas | None:
        row = await self.pool.fetchrow(N(q.GET_QUOTAS), tenant_id)
        return q.quotas(row) if row else None

    async def tenant_usage(self, tenant_id: str, at: float | None = None) -> Usage:
        args = q.usage_params(tenant_id, time.time() if at is None else at)
        row = await self.pool.fetchrow(N(q.USAGE), *args)
        assert row is not None
        return q.usage(row)

    @asynccontextmanager
    async def _admission(
        self, tenant_id: str, at: float, limits: Usage | None, adding: Usage
    ) -> AsyncIterator[tuple[Conn, str | None]]:
        """A transaction on one connection that yields it and the count `adding` would take
        past `limits`, if any; the caller inserts on it only when None. The tenant's row is
        locked first, so the usage read next (a new snapshot: READ COMMITTED) already holds
        every admission that went before."""
        async with self.pool.acquire() as conn, conn.transaction():
            if limits is None:
                yield conn, None
                return
            await conn.execute(q.LOCK_TENANT, tenant_id)
            row = await conn.fetchrow(N(q.USAGE), *q.usage_params(tenant_id, at))
            assert row is not None
            yield conn, q.usage(row).over(limits, adding)
