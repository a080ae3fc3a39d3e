"""PostgreSQL statements for the human review queue (`review_sql`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import review_sql as q
from store.records import Feedback, ReviewCandidate
from store.training_sql import numbered as N

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]


class ReviewMixinPG:
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def next_to_review(self, tenant_id: str, threshold: float) -> ReviewCandidate | None:
        row = await self.pool.fetchrow(N(q.NEXT_TO_REVIEW), *q.next_params(tenant_id, threshold))
        return q.candidate(row) if row else None

    async def add_review(self, feedback: Feedback) -> bool:
        status = await self.pool.execute(N(q.ADD_REVIEW), *q.review_params(feedback))
        return status == "INSERT 0 1"
