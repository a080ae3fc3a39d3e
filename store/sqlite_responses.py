"""SQLite statements for stored Responses-API responses (`responses_sql`)."""

from __future__ import annotations

from store import responses_sql as q
from store.records import StoredResponse
from store.sqlite_capture import SQLiteMixin


class ResponsesMixin(SQLiteMixin):
    async def add_response(self, response: StoredResponse) -> None:
        await self._write(q.INSERT, q.insert_params(response))

    async def get_response(self, tenant_id: str, response_id: str) -> StoredResponse | None:
        async with self.db.execute(q.GET, (tenant_id, response_id)) as cur:
            row = await cur.fetchone()
        return q.response(row) if row else None

    async def response_chain(
        self, tenant_id: str, response_id: str, limit: int
    ) -> list[StoredResponse]:
        async with self.db.execute(q.CHAIN, q.chain_params(tenant_id, response_id, limit)) as cur:
            return [q.response(r) for r in await cur.fetchall()]

    async def delete_response(self, tenant_id: str, response_id: str) -> bool:
        async with self.transaction():
            async with self.db.execute(q.DELETE, (tenant_id, response_id)) as cur:
                row = await cur.fetchone()
            if row is not None and row[0] is not None:
                await self.db.execute(q.DELETE_COMPLETION, (tenant_id, row[0]))
        return row is not None
