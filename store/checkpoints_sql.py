"""The statements for a fine-tuning job's per-epoch checkpoints, in one dialect (`?`; PostgreSQL
runs them through `training_sql.numbered`)."""

from __future__ import annotations

from store.records import JobCheckpoint
from store.training_sql import Row

COLUMNS = (
    "id, job_id, tenant_id, step, epoch, train_loss, valid_loss, path, "
    "fine_tuned_model_checkpoint, created_at, adapter_version"
)
INSERT = f"INSERT INTO job_checkpoints ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
GET = "SELECT * FROM job_checkpoints WHERE tenant_id = ? AND id = ?"
# Newest first, as OpenAI lists them; the cursor is looked up within the same job (and so the
# same tenant): another job's checkpoint id is an unknown cursor.
LIST = (
    "SELECT * FROM job_checkpoints WHERE tenant_id = ? AND job_id = ? {after} "
    "ORDER BY step DESC, id DESC LIMIT ?"
)
AFTER = "AND step < (SELECT step FROM job_checkpoints WHERE id = ? AND job_id = ?)"
CLEAR = "DELETE FROM job_checkpoints WHERE job_id = ?"
SET_VERSION = "UPDATE job_checkpoints SET adapter_version = ? WHERE id = ?"


def params(c: JobCheckpoint) -> tuple[object, ...]:
    return (
        c.id,
        c.job_id,
        c.tenant_id,
        c.step,
        c.epoch,
        c.train_loss,
        c.valid_loss,
        c.path,
        c.fine_tuned_model_checkpoint,
        c.created_at,
        c.adapter_version,
    )


def list_query(
    tenant_id: str, job_id: str, after: str | None, limit: int
) -> tuple[str, list[object]]:
    """The page's statement and arguments (one row more than `limit`: is there a next page)."""
    cursor: list[object] = [after, job_id] if after else []
    sql = LIST.format(after=AFTER if after else "")
    return sql, [tenant_id, job_id, *cursor, limit + 1]


def checkpoint(row: Row) -> JobCheckpoint:
    return JobCheckpoint(**{k: row[k] for k in JobCheckpoint.__struct_fields__})
