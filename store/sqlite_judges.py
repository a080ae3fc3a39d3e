"""SQLite statements for each tenant's judge configuration."""

from __future__ import annotations

from store import judges_sql as q
from store.records import JudgeConfig
from store.sqlite_capture import SQLiteMixin


class JudgesMixin(SQLiteMixin):
    async def set_judge(self, judge: JudgeConfig) -> JudgeConfig:
        await self._write(q.SET_JUDGE, q.judge_params(judge))
        found = await self.get_judge(judge.tenant_id)
        assert found is not None
        return found

    async def get_judge(self, tenant_id: str) -> JudgeConfig | None:
        async with self.db.execute(q.GET_JUDGE, (tenant_id,)) as cur:
            row = await cur.fetchone()
        return q.judge(row) if row else None

    async def delete_judge(self, tenant_id: str) -> bool:
        cur = await self._write(q.DELETE_JUDGE, (tenant_id,))
        return cur.rowcount > 0
