"""The statements for uploaded files, dataset snapshots and fine-tuning jobs, in one dialect.

Written with `?` placeholders (SQLite); `numbered` rewrites them as `$1..$n` for PostgreSQL, so
both backends run the same SQL.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from store.records import Dataset, FileObject, FineTuningJob, JobEvent

_PLACEHOLDER = re.compile(r"\?")


def numbered(sql: str) -> str:
    counter = iter(range(1, 1000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


FILE_COLUMNS = "id, tenant_id, purpose, filename, bytes, lines, path, created_by, created_at"
INSERT_FILE = f"INSERT INTO files ({FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
GET_FILE = "SELECT * FROM files WHERE tenant_id = ? AND id = ?"
LIST_FILES = "SELECT * FROM files WHERE tenant_id = ? ORDER BY created_at DESC, id DESC"
DELETE_FILE = "DELETE FROM files WHERE tenant_id = ? AND id = ?"

DATASET_COLUMNS = (
    "id, tenant_id, content_hash, source, source_file_id, train_count, eval_count, "
    "preference_count, path, stats, created_by, created_at"
)
INSERT_DATASET = (
    f"INSERT INTO datasets ({DATASET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
GET_DATASET = "SELECT * FROM datasets WHERE tenant_id = ? AND id = ?"
LIST_DATASETS = "SELECT * FROM datasets WHERE tenant_id = ? ORDER BY created_at DESC, id DESC"

LIST_OPTOUTS = "SELECT end_user FROM training_optouts WHERE tenant_id = ?"


JOB_COLUMNS = (
    "id, tenant_id, created_by, model, base_model, base_adapter, training_file, "
    "validation_file, dataset_id, hyperparameters, suffix, seed, status, stage, created_at"
)
INSERT_JOB = (
    f"INSERT INTO fine_tuning_jobs ({JOB_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
GET_JOB = "SELECT * FROM fine_tuning_jobs WHERE id = ?"
GET_TENANT_JOB = "SELECT * FROM fine_tuning_jobs WHERE id = ? AND tenant_id = ?"
LIST_JOBS = (
    "SELECT * FROM fine_tuning_jobs WHERE tenant_id = ? {after} "
    "ORDER BY created_at DESC, id DESC LIMIT ?"
)
# The cursor is looked up within the tenant: another tenant's job id is an unknown cursor.
JOBS_AFTER = (
    "AND (created_at, id) < "
    "(SELECT created_at, id FROM fine_tuning_jobs WHERE id = ? AND tenant_id = ?)"
)
# One statement, so two workers can never claim the same job (PostgreSQL adds SKIP LOCKED).
# Fair shares, not global FIFO: the oldest queued job of the tenant with the fewest jobs in
# training, and among those of the tenant served least recently (its latest claim; never
# served first); a tenant that queues many jobs cannot make the others wait behind all of them.
CLAIM_JOB = (
    "UPDATE fine_tuning_jobs SET status = 'running', stage = 'training', worker = ?, "
    "attempts = attempts + 1, started_at = COALESCE(started_at, ?), heartbeat_at = ?, "
    "claimed_at = ? "
    "WHERE id = (SELECT j.id FROM fine_tuning_jobs j WHERE j.status = 'queued' ORDER BY "
    "(SELECT COUNT(*) FROM fine_tuning_jobs r WHERE r.tenant_id = j.tenant_id "
    "AND r.stage = 'training'), "
    "COALESCE((SELECT MAX(s.claimed_at) FROM fine_tuning_jobs s "
    "WHERE s.tenant_id = j.tenant_id), 0), "
    "j.created_at, j.id LIMIT 1 {lock}) AND status = 'queued' RETURNING *"
)
HEARTBEAT = (
    "UPDATE fine_tuning_jobs SET heartbeat_at = ? WHERE id = ? AND worker = ? "
    "AND stage = 'training' RETURNING cancel_requested"
)
CANCEL_QUEUED = (
    "UPDATE fine_tuning_jobs SET status = 'cancelled', stage = 'done', finished_at = ? "
    "WHERE id = ? AND tenant_id = ? AND status IN ('validating_files', 'queued')"
)
CANCEL_RUNNING = (
    "UPDATE fine_tuning_jobs SET cancel_requested = TRUE WHERE id = ? AND tenant_id = ? "
    "AND status = 'running'"
)
# A training job whose worker stopped beating goes back to the queue; it ends instead if it was
# cancelled, or fails (`too_many_attempts`) once started more than `max_requeues` + 1 times: a
# job that keeps killing its worker (memory, a crash) must not hold the machine forever.
REQUEUE_STALE = (
    "UPDATE fine_tuning_jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' "
    "WHEN attempts > ? THEN 'failed' ELSE 'queued' END, "
    "stage = CASE WHEN cancel_requested OR attempts > ? THEN 'done' ELSE 'queued' END, "
    "error = CASE WHEN cancel_requested OR attempts <= ? THEN error ELSE ? END, "
    "finished_at = CASE WHEN cancel_requested OR attempts > ? THEN ? ELSE finished_at END, "
    "worker = NULL WHERE stage = 'training' AND heartbeat_at < ? RETURNING id, status"
)
NO_REQUEUE_LIMIT = 2**62


def requeue_params(before: float, max_requeues: int | None, now: float) -> tuple[object, ...]:
    limit = NO_REQUEUE_LIMIT if max_requeues is None else max_requeues
    return (limit, limit, limit, too_many_attempts(limit), limit, now, before)


def too_many_attempts(max_requeues: int) -> str:
    """The error of a job that lost its worker once more than it may be requeued."""
    message = (
        f"the worker running this job went silent on attempt {max_requeues + 1} or later; a job "
        f"is queued again at most {max_requeues} times, so this one failed"
    )
    return json.dumps({"code": "too_many_attempts", "message": message, "param": None})


JOBS_IN_STAGE = "SELECT * FROM fine_tuning_jobs WHERE stage = ? ORDER BY created_at, id"
INSERT_EVENT = "INSERT INTO job_events (job_id, level, message, data, at) VALUES (?, ?, ?, ?, ?)"
LIST_EVENTS = "SELECT * FROM job_events WHERE job_id = ? {after} ORDER BY seq DESC LIMIT ?"
EVENTS_AFTER = "AND seq < ?"


def update_job(columns: dict[str, object], *, fenced: bool) -> tuple[str, list[object]]:
    """SET the given columns; `fenced` adds `AND worker = ?` (only the owning worker writes)."""
    names = sorted(columns)
    sql = "UPDATE fine_tuning_jobs SET " + ", ".join(f"{n} = ?" for n in names) + " WHERE id = ?"
    if fenced:
        sql += " AND worker = ?"
    return sql, [columns[n] for n in names]


def file_params(f: FileObject) -> tuple[object, ...]:
    return (
        f.id,
        f.tenant_id,
        f.purpose,
        f.filename,
        f.bytes,
        f.lines,
        f.path,
        f.created_by,
        f.created_at,
    )


def file(row: Row) -> FileObject:
    return FileObject(**{k: row[k] for k in FileObject.__struct_fields__})


def dataset_params(d: Dataset) -> tuple[object, ...]:
    return (
        d.id,
        d.tenant_id,
        d.content_hash,
        d.source,
        d.source_file_id,
        d.train_count,
        d.eval_count,
        d.preference_count,
        d.path,
        d.stats,
        d.created_by,
        d.created_at,
    )


def dataset(row: Row) -> Dataset:
    return Dataset(**{k: row[k] for k in Dataset.__struct_fields__})


def job_params(j: FineTuningJob) -> tuple[object, ...]:
    return (
        j.id,
        j.tenant_id,
        j.created_by,
        j.model,
        j.base_model,
        j.base_adapter,
        j.training_file,
        j.validation_file,
        j.dataset_id,
        j.hyperparameters,
        j.suffix,
        j.seed,
        j.status,
        j.stage,
        j.created_at,
    )


def job(row: Row) -> FineTuningJob:
    values = {k: row[k] for k in FineTuningJob.__struct_fields__}
    values["cancel_requested"] = bool(values["cancel_requested"])
    return FineTuningJob(**values)


def event(row: Row) -> JobEvent:
    return JobEvent(row["seq"], row["job_id"], row["level"], row["message"], row["data"], row["at"])


def event_data(data: dict[str, float | int | str] | None) -> str | None:
    return None if data is None else json.dumps(data, sort_keys=True)
