"""The statements for batches and their per-line results, in one dialect.

`?` placeholders; PostgreSQL rewrites them with `training_sql.numbered`. A batch is claimed by
one evals worker at a time (heartbeats, like eval runs); a line's result is written once
(the first write wins), and the batch's counts grow in the same transaction, so a resumed
batch neither sends nor counts a line twice.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from store.records import BatchRecord, BatchResult


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


_ACTIVE = "('validating', 'in_progress', 'finalizing', 'cancelling')"
COLUMNS = (
    "id, tenant_id, key_id, endpoint, input_file_id, completion_window, status, metadata, "
    "model, total, created_at, expires_at"
)
INSERT = f"INSERT INTO batches ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
GET = "SELECT * FROM batches WHERE tenant_id = ? AND id = ?"
GET_BY_ID = "SELECT * FROM batches WHERE id = ?"
LIST = "SELECT * FROM batches WHERE tenant_id = ? {after} ORDER BY created_at DESC, id DESC LIMIT ?"
# The cursor is looked up within the tenant: another tenant's batch id is an unknown cursor.
AFTER = "AND (created_at, id) < (SELECT created_at, id FROM batches WHERE id = ? AND tenant_id = ?)"
# The oldest unclaimed batch not yet ended goes to one worker (PostgreSQL: `lock` skips rows
# another claims); a new one starts, one that lost its worker resumes where it was.
CLAIM = (
    "UPDATE batches SET worker = ?, heartbeat_at = ?, attempts = attempts + 1, "
    "status = CASE status WHEN 'validating' THEN 'in_progress' ELSE status END, "
    "in_progress_at = COALESCE(in_progress_at, ?) "
    f"WHERE id = (SELECT id FROM batches WHERE status IN {_ACTIVE} AND worker IS NULL "
    "ORDER BY created_at, id LIMIT 1 {lock}) AND worker IS NULL RETURNING *"
)
# The status the heartbeat found (the worker learns of a cancel); nothing: the batch is not its.
HEARTBEAT = (
    "UPDATE batches SET heartbeat_at = ? WHERE id = ? AND worker = ? "
    f"AND status IN {_ACTIVE} RETURNING status"
)
FINALIZING = (
    "UPDATE batches SET status = 'finalizing', finalizing_at = ? "
    "WHERE id = ? AND worker = ? AND status = 'in_progress'"
)
# The end: `{at}` is the timestamp column of the final status.
FINISH = (
    "UPDATE batches SET status = ?, {at} = ?, output_file_id = ?, error_file_id = ?, error = ?, "
    f"worker = NULL WHERE id = ? AND worker = ? AND status IN {_ACTIVE}"
)
FINISHED_AT = {
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelled": "cancelled_at",
}
# A worker that stops hands its batch back at once: the next claim resumes it.
RELEASE = "UPDATE batches SET worker = NULL WHERE id = ? AND worker = ?"
CANCEL = (
    "UPDATE batches SET status = 'cancelling', cancelling_at = ? "
    "WHERE tenant_id = ? AND id = ? AND status IN ('validating', 'in_progress')"
)
# A batch whose worker went silent: unclaimed again (it resumes), or failed past the limit.
REQUEUE_STALE = (
    "UPDATE batches SET status = CASE WHEN attempts > ? THEN 'failed' ELSE status END, "
    "error = CASE WHEN attempts > ? THEN ? ELSE error END, "
    "failed_at = CASE WHEN attempts > ? THEN ? ELSE failed_at END, worker = NULL "
    f"WHERE status IN {_ACTIVE} AND worker IS NOT NULL AND heartbeat_at < ? "
    "RETURNING id, status"
)
LOST_WORKER = "its worker went silent (crashed or was stopped) {n} times; not retried again"
INSERT_RESULT = (
    "INSERT INTO batch_results (batch_id, line, custom_id, status_code, request_id, body, "
    "error_code, error_message, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (batch_id, line) DO NOTHING"
)
COUNT_RESULT = "UPDATE batches SET completed = completed + ?, failed = failed + ? WHERE id = ?"
RESULT_LINES = "SELECT line FROM batch_results WHERE batch_id = ?"
RESULTS = "SELECT * FROM batch_results WHERE batch_id = ? ORDER BY line"


def params(b: BatchRecord) -> tuple[object, ...]:
    return (
        b.id,
        b.tenant_id,
        b.key_id,
        b.endpoint,
        b.input_file_id,
        b.completion_window,
        b.status,
        json.dumps(b.metadata),
        b.model,
        b.total,
        b.created_at,
        b.expires_at,
    )


def batch(row: Row) -> BatchRecord:
    values = {k: row[k] for k in BatchRecord.__struct_fields__}
    values["metadata"] = json.loads(values["metadata"])
    return BatchRecord(**values)


def requeue_params(before: float, max_requeues: int, now: float) -> tuple[object, ...]:
    error = "the batch failed: " + LOST_WORKER.format(n=max_requeues + 1)
    return (max_requeues, max_requeues, error, max_requeues, now, before)


def finish_sql(status: str) -> str:
    return FINISH.format(at=FINISHED_AT[status])


def result_params(r: BatchResult) -> tuple[object, ...]:
    return (
        r.batch_id,
        r.line,
        r.custom_id,
        r.status_code,
        r.request_id,
        r.body,
        r.error_code,
        r.error_message,
        r.created_at,
    )


def counts(r: BatchResult) -> tuple[int, int, str]:
    """COUNT_RESULT's arguments for one newly written result."""
    return (int(r.ok), int(not r.ok), r.batch_id)


def result(row: Row) -> BatchResult:
    return BatchResult(**{k: row[k] for k in BatchResult.__struct_fields__})
