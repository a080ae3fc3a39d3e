"""PostgreSQL statements for stored Responses-API responses (`responses_sql`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import responses_sql as q
from store.records import StoredResponse
from store.training_sql import numbered as N

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]

_INSERT, _GET, _CHAIN = N(q.INSERT), N(q.GET), N(q.CHAIN)
_DELETE_COMPLETION, _DELETE = N(q.DELETE_COMPLETION), N(q.DELETE)


class ResponsesMixinPG:
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def add_response(self, response: StoredResponse) -> None:
        await self.pool.execute(_INSERT, *q.insert_params(response))

    async def get_response(self, tenant_id: str, response_id: str) -> StoredResponse | None:
        row = await self.pool.fetchrow(_GET, tenant_id, response_id)
        return q.response(row) if row else None

    async def response_chain(
        self, tenant_id: str, response_id: str, limit: int
    ) -> list[StoredResponse]:
        rows = await self.pool.fetch(_CHAIN, *q.chain_params(tenant_id, response_id, limit))
        return [q.response(r) for r in rows]

    async def delete_response(self, tenant_id: str, response_id: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_DELETE, tenant_id, response_id)
            if row is not None and row[0] is not None:
                await conn.execute(_DELETE_COMPLETION, tenant_id, row[0])
        return row is not None
