"""SQLite statements for the human review queue (`review_sql`)."""

from __future__ import annotations

from store import review_sql as q
from store.records import Feedback, ReviewCandidate
from store.sqlite_capture import SQLiteMixin


class ReviewMixin(SQLiteMixin):
    async def next_to_review(self, tenant_id: str, threshold: float) -> ReviewCandidate | None:
        async with self.db.execute(q.NEXT_TO_REVIEW, q.next_params(tenant_id, threshold)) as cur:
            row = await cur.fetchone()
        return q.candidate(row) if row else None

    async def add_review(self, feedback: Feedback) -> bool:
        cur = await self._write(q.ADD_REVIEW, q.review_params(feedback))
        return cur.rowcount == 1
