"""The statement for the human review queue, in one dialect (`?`; PostgreSQL numbers them).

A tenant's stored chat completion waits for review when its feedback holds a negative signal
(a 'down' rating or a score below the threshold) or an eval case taken from it scored below the
threshold, until a reviewer's feedback (author `reviewer:<name>`) is on it. Disagreement (a
positive signal beside a negative one) goes first, then negative feedback, then low grades;
oldest first within each. `waiting` counts the whole queue in the same statement.

A completion takes one reviewer's decision: the unique index `feedback_one_review` (store.schema)
makes the second of two racing decisions insert nothing (`ADD_REVIEW`), on both backends.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from store import rows as rowmap
from store.records import Feedback, ReviewCandidate

REVIEWER_PREFIX = "reviewer:"  # feedback an API client sends is authored user:… or key:…


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


NEXT_TO_REVIEW = f"""
WITH signals AS (
    SELECT completion_id, SUM(negative) AS negative, SUM(positive) AS positive,
        MIN(low_score) AS low_score
    FROM (
        SELECT completion_id,
            CASE WHEN rating = 'down' OR score < ? THEN 1 ELSE 0 END AS negative,
            CASE WHEN rating = 'up' OR score >= ? THEN 1 ELSE 0 END AS positive,
            CASE WHEN author LIKE '{REVIEWER_PREFIX}%' THEN 1 ELSE 0 END AS reviews,
            CAST(NULL AS DOUBLE PRECISION) AS low_score
        FROM feedback WHERE tenant_id = ?
        UNION ALL
        SELECT s.completion_id, 0, 0, 0, r.score
        FROM eval_runs e
        JOIN eval_case_sources s ON s.run_id = e.id
        JOIN eval_results r
            ON r.run_id = s.run_id AND r.suite = s.suite AND r.case_id = s.case_id
        WHERE e.tenant_id = ? AND r.score < ?
    ) AS signal
    GROUP BY completion_id
    HAVING SUM(reviews) = 0 AND (SUM(negative) > 0 OR MIN(low_score) IS NOT NULL)
), queue AS (
    SELECT s.*, c.created_at,
        CASE WHEN s.positive > 0 AND (s.negative > 0 OR s.low_score IS NOT NULL) THEN 0
            WHEN s.negative > 0 THEN 1 ELSE 2 END AS priority,
        COUNT(*) OVER () AS waiting
    FROM signals s JOIN completions c ON c.id = s.completion_id
    WHERE c.tenant_id = ? AND c.stored AND c.kind = 'chat'
    ORDER BY priority, c.created_at, c.id
    LIMIT 1
)
SELECT c.*, q.negative, q.positive, q.low_score, q.waiting
FROM queue q JOIN completions c ON c.id = q.completion_id
"""


def next_params(tenant_id: str, threshold: float) -> tuple[object, ...]:
    return (threshold, threshold, tenant_id, tenant_id, threshold, tenant_id)


def candidate(row: Row) -> ReviewCandidate:
    return ReviewCandidate(
        completion=rowmap.completion(row),
        negative=int(row["negative"]),
        positive=int(row["positive"]),
        low_score=row["low_score"],
        waiting=int(row["waiting"]),
    )


ADD_REVIEW = """
INSERT INTO feedback (id, completion_id, tenant_id, rating, score, correction, comment, tags,
    author, created_at, key_id, end_user)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
"""


def review_params(f: Feedback) -> tuple[object, ...]:
    """The row of a reviewer's decision (only those fall under the one-per-completion index)."""
    if not f.author.startswith(REVIEWER_PREFIX):
        raise ValueError(f"a review is authored {REVIEWER_PREFIX}<name>, not {f.author!r}")
    tags = json.dumps(list(f.tags))
    row = (f.id, f.completion_id, f.tenant_id, f.rating, f.score, f.correction, f.comment, tags)
    return (*row, f.author, f.created_at, f.key_id, f.end_user)
