"""The statements for per-tenant quotas: the admin's overrides, and the usage quotas count.

`?` placeholders; PostgreSQL rewrites them with `training_sql.numbered`. A row that a quota
counts (a file, a dataset snapshot, a job, an eval run) is added in the same transaction that
counts the tenant's usage: SQLite's BEGIN IMMEDIATE, or on PostgreSQL after `LOCK_TENANT`, so
concurrent requests, from one gateway or many, never take a tenant past its quota.
"""

from __future__ import annotations

from typing import Any, Protocol

from store.records import QUOTA_FIELDS, FileObject, FineTuningJob, TenantQuotas, Usage

DAY_S = 86_400.0  # the window of the per-day quotas (jobs, eval runs): the last 24 hours


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


_COLUMNS = "tenant_id, " + ", ".join(QUOTA_FIELDS) + ", updated_at"
SET_QUOTAS = (
    f"INSERT INTO tenant_quotas ({_COLUMNS}) VALUES ({', '.join('?' * (len(QUOTA_FIELDS) + 2))}) "
    "ON CONFLICT (tenant_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*QUOTA_FIELDS, "updated_at"))
)
DELETE_QUOTAS = "DELETE FROM tenant_quotas WHERE tenant_id = ?"
GET_QUOTAS = "SELECT * FROM tenant_quotas WHERE tenant_id = ?"

# Queued: what a worker may still claim. The day counts include failed and cancelled work.
USAGE = (
    "SELECT (SELECT COUNT(*) FROM files WHERE tenant_id = ?) AS files, "
    "(SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM files WHERE tenant_id = ?) "
    "AS file_bytes, "
    "(SELECT COUNT(*) FROM datasets WHERE tenant_id = ?) AS datasets, "
    "(SELECT COUNT(*) FROM fine_tuning_jobs WHERE tenant_id = ? "
    "AND status IN ('validating_files', 'queued')) AS queued_jobs, "
    "(SELECT COUNT(*) FROM fine_tuning_jobs WHERE tenant_id = ? AND created_at > ?) "
    "AS jobs_last_day, "
    "(SELECT COUNT(*) FROM eval_runs WHERE tenant_id = ? AND created_at > ?) "
    "AS eval_runs_last_day, "
    "(SELECT COUNT(*) FROM batches WHERE tenant_id = ? "
    "AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling')) AS active_batches"
)
# PostgreSQL: one admission per tenant at a time. NO KEY: rows that merely reference the tenant
# (captured traffic, feedback) are inserted meanwhile without waiting.
LOCK_TENANT = "SELECT id FROM tenants WHERE id = $1 FOR NO KEY UPDATE"


# What one new row adds to its tenant's usage.
A_DATASET = Usage(datasets=1)
AN_EVAL_RUN = Usage(eval_runs_last_day=1)
A_BATCH = Usage(active_batches=1)


def a_file(f: FileObject) -> Usage:
    return Usage(files=1, file_bytes=f.bytes)


def a_job(job: FineTuningJob) -> Usage:
    return Usage(queued_jobs=int(job.status in ("validating_files", "queued")), jobs_last_day=1)


def usage_params(tenant_id: str, at: float) -> tuple[object, ...]:
    """Arguments of USAGE for a row added at `at` (the day window ends there)."""
    since = at - DAY_S
    return (
        tenant_id,
        tenant_id,
        tenant_id,
        tenant_id,
        tenant_id,
        since,
        tenant_id,
        since,
        tenant_id,
    )


def usage(row: Row) -> Usage:
    return Usage(**{k: int(row[k]) for k in Usage.__struct_fields__})


def quotas_params(q: TenantQuotas) -> tuple[object, ...]:
    return (q.tenant_id, *(getattr(q, name) for name in QUOTA_FIELDS), q.updated_at)


def quotas(row: Row) -> TenantQuotas:
    return TenantQuotas(**{k: row[k] for k in TenantQuotas.__struct_fields__})
