"""SQLite statements for per-tenant quotas: overrides, usage, and admissions under them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from store import quotas_sql as q
from store.records import TenantQuotas, Usage
from store.sqlite_capture import SQLiteMixin


class QuotasMixin(SQLiteMixin):
    async def set_quotas(self, quotas: TenantQuotas) -> None:
        if quotas.unset:
            await self._write(q.DELETE_QUOTAS, (quotas.tenant_id,))
        else:
            await self._write(q.SET_QUOTAS, q.quotas_params(quotas))

    async def get_quotas(self, tenant_id: str) -> TenantQuotas | None:
        async with self.db.execute(q.GET_QUOTAS, (tenant_id,)) as cur:
            row = await cur.fetchone()
        return q.quotas(row) if row else None

    async def tenant_usage(self, tenant_id: str, at: float | None = None) -> Usage:
        args = q.usage_params(tenant_id, time.time() if at is None else at)
        async with self.db.execute(q.USAGE, args) as cur:
            row = await cur.fetchone()
        assert row is not None
        return q.usage(row)

    @asynccontextmanager
    async def _admission(
        self, tenant_id: str, at: float, limits: Usage | None, adding: Usage
    ) -> AsyncIterator[str | None]:
        """A write transaction (BEGIN IMMEDIATE: every other writer waits) that yields the
        count `adding` would take past `limits`, if any; the caller inserts only when None."""
        async with self.transaction():
            used = None if limits is None else await self.tenant_usage(tenant_id, at)
            yield None if used is None or limits is None else used.over(limits, adding)
