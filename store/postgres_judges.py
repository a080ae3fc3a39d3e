"""PostgreSQL statements for each tenant's judge configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import judges_sql as q
from store.records import JudgeConfig
from store.training_sql import numbered as N

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]


class JudgesMixinPG:
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def set_judge(self, judge: JudgeConfig) -> JudgeConfig:
        await self.pool.execute(N(q.SET_JUDGE), *q.judge_params(judge))
        found = await self.get_judge(judge.tenant_id)
        assert found is not None
        return found

    async def get_judge(self, tenant_id: str) -> JudgeConfig | None:
        row = await self.pool.fetchrow(N(q.GET_JUDGE), tenant_id)
        return q.judge(row) if row else None

    async def delete_judge(self, tenant_id: str) -> bool:
        status = await self.pool.execute(N(q.DELETE_JUDGE), tenant_id)
        return int(status.rsplit(" ", 1)[-1]) > 0
